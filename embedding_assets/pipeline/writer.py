"""The write path: one batch = COPY BINARY into a temp table + one UPDATE ... FROM, one commit.

The COPY payload is built by numpy in a single buffer (every field is fixed width: id,
vector, 32-byte hash), so there is no per-row Python work. The UPDATE writes the vector and
its provenance together and never touches a row whose vector another model wrote.
"""

from __future__ import annotations

import numpy as np
import psycopg
from psycopg import sql

from ..config import SpaceConfig
from ..db.introspect import table_ident

_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_COPY_TRAILER = b"\xff\xff"
_HASH_BYTES = 32
STAGE_TABLE = "embedding_backfills_stage"


def copy_binary_payload(ids: np.ndarray, vectors: np.ndarray, hashes: list[bytes]) -> bytes:
    """PostgreSQL binary COPY rows (id int8, v vector, h bytea), built in one numpy pass."""
    n, dims = vectors.shape
    row = np.dtype(
        [
            ("nfields", ">i2"),
            ("id_len", ">i4"),
            ("id", ">i8"),
            ("v_len", ">i4"),
            ("v_dim", ">u2"),
            ("v_unused", ">u2"),
            ("v", ">f4", (dims,)),
            ("h_len", ">i4"),
            ("h", f"S{_HASH_BYTES}"),
        ]
    )
    rows = np.empty(n, dtype=row)
    rows["nfields"] = 3
    rows["id_len"] = 8
    rows["id"] = ids
    rows["v_len"] = 4 + 4 * dims  # pgvector binary: uint16 dim, uint16 unused, float4[dim]
    rows["v_dim"] = dims
    rows["v_unused"] = 0
    rows["v"] = vectors
    rows["h_len"] = _HASH_BYTES
    rows["h"] = hashes
    return _COPY_HEADER + rows.tobytes() + _COPY_TRAILER


class VectorWriter:
    """Writes batches of (id, vector, text hash) for one space over its own connection."""

    def __init__(self, conn: psycopg.Connection, space: SpaceConfig, model_key: int) -> None:
        self.conn = conn
        self.space = space
        self.model_key = model_key
        dims = space.model.dimensions
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE IF NOT EXISTS {s} (id bigint, v vector({d}), h bytea)"
                " ON COMMIT DELETE ROWS"
            ).format(s=sql.Identifier(STAGE_TABLE), d=sql.Literal(dims))
        )
        ident = {
            "t": table_ident(space),
            "id": sql.Identifier(space.id_column),
            "v": sql.Identifier(space.target_column),
            "hc": sql.Identifier(space.text_hash_column),
            "k": sql.Identifier(space.model_key_column),
            "s": sql.Identifier(STAGE_TABLE),
        }
        self._copy = sql.SQL("COPY {s} (id, v, h) FROM STDIN (FORMAT BINARY)").format(**ident)
        self._update = sql.SQL(
            "UPDATE {t} AS t SET {v} = s.v, {hc} = s.h, {k} = %(key)s FROM {s} AS s"
            " WHERE t.{id} = s.id AND (t.{k} IS NULL OR t.{k} = %(key)s)"
        ).format(**ident)
        # Text became blank after it was embedded: the old vector no longer describes it.
        self._clear = sql.SQL(
            "UPDATE {t} SET {v} = NULL, {hc} = NULL, {k} = NULL"
            " WHERE {id} = ANY(%(ids)s) AND ({k} IS NULL OR {k} = %(key)s)"
        ).format(**ident)

    def write(
        self, ids: list[int], vectors: np.ndarray, hashes: list[bytes], clear_ids: list[int]
    ) -> int:
        """Write one batch in one transaction; return the rows updated."""
        written = 0
        with self.conn.transaction():
            if ids:
                payload = copy_binary_payload(np.asarray(ids, dtype=np.int64), vectors, hashes)
                with self.conn.cursor() as cur:
                    with cur.copy(self._copy) as copy:
                        copy.write(payload)
                    cur.execute(self._update, {"key": self.model_key})
                    written = cur.rowcount
            if clear_ids:
                self.conn.execute(self._clear, {"ids": clear_ids, "key": self.model_key})
        return written
