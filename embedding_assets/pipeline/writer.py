"""The write path: one batch, one transaction, binary all the way.

Vectors that fit in the row (<= 495 dims) go COPY BINARY into a temp table, then one
UPDATE ... FROM; the COPY payload is built by numpy in a single buffer (every field is fixed
width: id, vector, 32-byte hash), with no per-row Python work. Larger vectors are stored out
of line (TOAST), and staging them would toast each one twice: they go through pipelined
binary `executemany` instead, which measured ~1.4x faster at 1024 dims
(`benchmarks/write_path.py`). Either way the vector and its provenance are written by one
statement, and a row whose vector another model wrote is never touched.
"""

from __future__ import annotations

import struct
import uuid

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from ..config import SpaceConfig
from ..db.introspect import space_sql
from ..db.keys import KeyType

_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_COPY_TRAILER = b"\xff\xff"
_HASH_BYTES = 32
STAGE_TABLE = "embedding_backfills_stage"
# Above this a vector (4 bytes/dim + 4) no longer fits inline and pgvector TOASTs it.
INLINE_MAX_DIMS = 495


def _rows(vectors: np.ndarray, hashes: list[bytes], head: list[tuple[str, str]]) -> np.ndarray:
    """Binary COPY rows as one structured array: `head` fields, then (vector, hash)."""
    n, dims = vectors.shape
    row = np.dtype(
        [
            *head,
            ("v_len", ">i4"),
            ("v_dim", ">u2"),
            ("v_unused", ">u2"),
            ("v", ">f4", (dims,)),
            ("h_len", ">i4"),
            ("h", f"S{_HASH_BYTES}"),
        ]
    )
    rows = np.empty(n, dtype=row)
    rows["v_len"] = 4 + 4 * dims  # pgvector binary: uint16 dim, uint16 unused, float4[dim]
    rows["v_dim"] = dims
    rows["v_unused"] = 0
    rows["v"] = vectors
    rows["h_len"] = _HASH_BYTES
    rows["h"] = hashes
    return rows


def copy_binary_payload(ids: np.ndarray, vectors: np.ndarray, hashes: list[bytes]) -> bytes:
    """PostgreSQL binary COPY rows (id int8, v vector, h bytea), built in one numpy pass."""
    rows = _rows(vectors, hashes, [("nfields", ">i2"), ("id_len", ">i4"), ("id", ">i8")])
    rows["nfields"] = 3
    rows["id_len"] = 8
    rows["id"] = ids
    return _COPY_HEADER + rows.tobytes() + _COPY_TRAILER


def copy_binary_payload_keys(keys: list[bytes], vectors: np.ndarray, hashes: list[bytes]) -> bytes:
    """Binary COPY rows (id, v, h) for keys of any width (uuid, text): the fixed tail built
    by numpy, one small join per row for the key."""
    tail = _rows(vectors, hashes, [])
    width = tail.dtype.itemsize
    raw = memoryview(tail.tobytes())
    parts = [_COPY_HEADER]
    for i, key in enumerate(keys):
        parts.append(struct.pack(">hi", 3, len(key)))
        parts.append(key)
        parts.append(raw[i * width : (i + 1) * width])
    parts.append(_COPY_TRAILER)
    return b"".join(parts)


def key_bytes(key: KeyType, values: list[object]) -> list[bytes]:
    """Key values in PostgreSQL's binary format: uuid 16 bytes, text its UTF-8."""
    if key.kind == "uuid":
        return [v.bytes if isinstance(v, uuid.UUID) else uuid.UUID(str(v)).bytes for v in values]
    return [str(v).encode() for v in values]


class VectorWriter:
    """Writes batches of (id, vector, text hash) for one space over its own connection."""

    def __init__(
        self, conn: psycopg.Connection, space: SpaceConfig, model_key: int, key: KeyType
    ) -> None:
        self.conn = conn
        self.space = space
        self.model_key = model_key
        self.key = key
        dims = space.model.dimensions
        self.staged = dims <= INLINE_MAX_DIMS
        # Integers travel as int8 (one numpy pass); others in the column's own type, so
        # that char(n) compares padded and uuid as 16 bytes.
        stage_type = sql.SQL("bigint") if key.kind == "integer" else key.cast
        if self.staged:
            conn.execute(
                sql.SQL(
                    "CREATE TEMP TABLE IF NOT EXISTS {s} (id {k}, v vector({d}), h bytea)"
                    " ON COMMIT DELETE ROWS"
                ).format(s=sql.Identifier(STAGE_TABLE), k=stage_type, d=sql.Literal(dims))
            )
        else:
            register_vector(conn)
        kx = key.expr("t")
        ident = {
            **space_sql(space),
            "s": sql.Identifier(STAGE_TABLE),
            "lo": key.cast_text(sql.Placeholder("lo")),
            "hi": key.cast_text(sql.Placeholder("hi")),
            "kx": kx,
            "one": key.cast_text(sql.SQL("%s")),
            "ids": key.array("ids"),
        }
        self._copy = sql.SQL("COPY {s} (id, v, h) FROM STDIN (FORMAT BINARY)").format(**ident)
        self._update = sql.SQL(
            "UPDATE {t} AS t SET {v} = s.v, {hc} = s.h, {k} = %(key)s FROM {s} AS s"
            " WHERE t.{id} = s.id AND (t.{k} IS NULL OR t.{k} = %(key)s)"
            # The batch's id bounds: without them the planner, blind to the temp table's
            # size, merge-joins from the table's first id, and each batch costs more than
            # the last (measured: 12 ms -> 71 ms per 1000-row batch over 50k rows).
            " AND {kx} >= {lo} AND {kx} <= {hi}"
        ).format(**ident)
        self._update_row = sql.SQL(
            "UPDATE {t} AS t SET {v} = %b, {hc} = %b, {k} = %b"
            " WHERE t.{id} = {one} AND (t.{k} IS NULL OR t.{k} = %b)"
        ).format(**ident)
        # Text became blank (or the row left the `where` filter) after it was embedded: the
        # old vector no longer describes it.
        self._clear = sql.SQL(
            "UPDATE {t} AS t SET {v} = NULL, {hc} = NULL, {k} = NULL"
            " WHERE t.{id} = ANY({ids}) AND (t.{k} IS NULL OR t.{k} = %(key)s)"
        ).format(**ident)

    def _payload(self, ids: list[object], vectors: np.ndarray, hashes: list[bytes]) -> bytes:
        if self.key.kind == "integer":
            return copy_binary_payload(np.asarray(ids, dtype=np.int64), vectors, hashes)
        return copy_binary_payload_keys(key_bytes(self.key, ids), vectors, hashes)

    def write(
        self,
        ids: list[object],
        vectors: np.ndarray,
        hashes: list[bytes],
        clear_ids: list[object],
    ) -> int:
        """Write one batch in one transaction; return the rows updated.

        `ids` are in key order (as read), so the first and last bound the batch.
        """
        written = 0
        text = self.key.to_text
        with self.conn.transaction():
            if ids and not self.staged:
                key = self.model_key
                rows = [
                    (v, h, key, text(i), key) for v, h, i in zip(vectors, hashes, ids, strict=True)
                ]
                with self.conn.cursor() as cur:
                    cur.executemany(self._update_row, rows, returning=False)
                    written = cur.rowcount
            elif ids:
                with self.conn.cursor() as cur:
                    with cur.copy(self._copy) as copy:
                        copy.write(self._payload(ids, vectors, hashes))
                    bounds = {"key": self.model_key, "lo": text(ids[0]), "hi": text(ids[-1])}
                    cur.execute(self._update, bounds)
                    written = cur.rowcount
            if clear_ids:
                self.conn.execute(
                    self._clear, {"ids": [text(i) for i in clear_ids], "key": self.model_key}
                )
        return written
