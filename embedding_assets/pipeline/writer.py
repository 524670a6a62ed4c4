"""The write path: one batch, one transaction, binary all the way.

Destination `table` (see `db.destination`): rows the destination table does not hold yet
(the whole first backfill) go COPY BINARY straight into it, the fastest way PostgreSQL takes
rows; rows it holds (re-embedded after an edit) are upserted, never over another model's.
While batches keep finding nothing held, the next one is COPYed without asking first: a
held row then fails the COPY on the primary key, the batch's transaction rolls back whole,
and it is written again the careful way (probe, COPY the new rows, upsert the others).
Destination `column`:

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
from ..db.destination import destination_of
from ..db.introspect import space_sql
from ..db.keys import KeyType

_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_COPY_TRAILER = b"\xff\xff"
_HASH_BYTES = 32
STAGE_TABLE = "embedding_backfills_stage"
# Above this a vector (4 bytes/dim + 4) no longer fits inline and pgvector TOASTs it.
INLINE_MAX_DIMS = 495


_MODEL_KEY = [("k_len", ">i4"), ("k", ">i8")]


def _rows(
    vectors: np.ndarray,
    hashes: list[bytes],
    head: list[tuple[str, str]],
    model_key: int | None = None,
    halfvec: bool = False,
    out: bytearray | None = None,
) -> np.ndarray:
    """Binary COPY rows as one structured array: `head` fields, then (vector, hash), then
    the model key when one is given. `halfvec`: pgvector's halfvec binary (float2).

    `out`: build them in place of this buffer, resized to header + rows + trailer, with the
    header and trailer written: at 1024 dims a batch is 4 MB, and a fresh array, its
    `tobytes()` and the concatenation cost as much CPU as the server spends taking it."""
    n, dims = vectors.shape
    component = ">f2" if halfvec else ">f4"
    row = np.dtype(
        [
            *head,
            ("v_len", ">i4"),
            ("v_dim", ">u2"),
            ("v_unused", ">u2"),
            ("v", component, (dims,)),
            ("h_len", ">i4"),
            ("h", f"S{_HASH_BYTES}"),
            *(_MODEL_KEY if model_key is not None else []),
        ]
    )
    if out is None:
        rows = np.empty(n, dtype=row)
    else:
        size = len(_COPY_HEADER) + n * row.itemsize + len(_COPY_TRAILER)
        if len(out) != size:
            out[:] = bytes(size)
        out[: len(_COPY_HEADER)] = _COPY_HEADER
        out[size - len(_COPY_TRAILER) :] = _COPY_TRAILER
        rows = np.frombuffer(out, dtype=row, count=n, offset=len(_COPY_HEADER))
    if model_key is not None:
        rows["k_len"] = 8
        rows["k"] = model_key
    # pgvector binary: uint16 dim, uint16 unused, float4[dim] (halfvec: float2[dim])
    rows["v_len"] = 4 + np.dtype(component).itemsize * dims
    rows["v_dim"] = dims
    rows["v_unused"] = 0
    rows["v"] = vectors
    rows["h_len"] = _HASH_BYTES
    rows["h"] = hashes
    return rows


# Binary COPY takes an integer in its column's own width.
_INT_WIDTHS = {"int2": ">i2", "int4": ">i4", "int8": ">i8"}


def copy_binary_payload(
    ids: np.ndarray,
    vectors: np.ndarray,
    hashes: list[bytes],
    model_key: int | None = None,
    id_type: str = "int8",
    halfvec: bool = False,
    out: bytearray | None = None,
) -> bytes | bytearray:
    """PostgreSQL binary COPY rows (id, v vector, h bytea[, k int8]), built in one numpy
    pass; `id_type` is the id column's int2, int4 or int8. With `out`, built in that
    buffer (reused batch after batch) and returned."""
    id_dtype = _INT_WIDTHS[id_type]
    head = [("nfields", ">i2"), ("id_len", ">i4"), ("id", id_dtype)]
    rows = _rows(vectors, hashes, head, model_key, halfvec, out)
    rows["nfields"] = 3 if model_key is None else 4
    rows["id_len"] = np.dtype(id_dtype).itemsize
    rows["id"] = ids
    if out is not None:
        return out
    return _COPY_HEADER + rows.tobytes() + _COPY_TRAILER


def copy_binary_payload_keys(
    keys: list[bytes],
    vectors: np.ndarray,
    hashes: list[bytes],
    model_key: int | None = None,
    halfvec: bool = False,
) -> bytes:
    """Binary COPY rows (id, v, h[, k]) for keys of any width (uuid, text): the fixed tail
    built by numpy, one small join per row for the key."""
    tail = _rows(vectors, hashes, [], model_key, halfvec)
    width = tail.dtype.itemsize
    raw = memoryview(tail.tobytes())
    nfields = 3 if model_key is None else 4
    parts = [_COPY_HEADER]
    for i, key in enumerate(keys):
        parts.append(struct.pack(">hi", nfields, len(key)))
        parts.append(key)
        parts.append(raw[i * width : (i + 1) * width])
    parts.append(_COPY_TRAILER)
    return b"".join(parts)


def _send(copy: psycopg.Copy, payload: bytes | bytearray) -> None:
    """Hand the payload to COPY through a view: psycopg sends a large buffer in chunks,
    and slices of a view are not copies. The view is released before the buffer is reused."""
    with memoryview(payload) as view:
        copy.write(view)


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
        dims = space.model.stored_dimensions
        self.to_table = destination_of(space).kind == "table"
        # Table mode: the last batch held no rows, so the next one most likely holds none.
        self._all_new = True
        self._buffer = bytearray()  # integer-key COPY payloads are built here, batch after batch
        self.halfvec = space.storage == "halfvec"
        inline_max = INLINE_MAX_DIMS * 2 if self.halfvec else INLINE_MAX_DIMS  # 2 bytes/dim
        self.staged = dims <= inline_max and not self.to_table
        # Integers travel as int8 (one numpy pass); others in the column's own type, so
        # that char(n) compares padded and uuid as 16 bytes.
        stage_type = sql.SQL("bigint") if key.kind == "integer" else key.cast
        if self.to_table:
            register_vector(conn)
        elif self.staged:
            conn.execute(
                sql.SQL(
                    "CREATE TEMP TABLE IF NOT EXISTS {s} (id {k}, v {storage}({d}), h bytea)"
                    " ON COMMIT DELETE ROWS"
                ).format(
                    s=sql.Identifier(STAGE_TABLE + ("_half" if self.halfvec else "")),
                    k=stage_type,
                    storage=sql.SQL(space.storage),
                    d=sql.Literal(dims),
                )
            )
        else:
            register_vector(conn)
        kx = key.expr("t")
        ident = {
            **space_sql(space),
            "s": sql.Identifier(STAGE_TABLE + ("_half" if self.halfvec else "")),
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
        if self.to_table:
            self._table_statements(ident)

    def _table_statements(self, ident: dict[str, sql.Composable]) -> None:
        """INSERT instead of UPDATE: the destination table holds one row per embedded row."""
        ekx = self.key.of_column(self.space.vector_key_column).expr("e")
        # One index probe of the batch's key span: empty (the whole first backfill) means
        # every row is new, and the exact probe of 1000 keys (~10 ms) is skipped.
        self._any_held = sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM {vt} AS e WHERE {ekx} >= {lo} AND {ekx} <= {hi})"
        ).format(ekx=ekx, **ident)
        self._held = sql.SQL("SELECT e.{vk} FROM {vt} AS e WHERE e.{vk} = ANY({ids})").format(
            **ident
        )
        self._copy = sql.SQL("COPY {vt} ({vk}, {v}, {hc}, {k}) FROM STDIN (FORMAT BINARY)").format(
            **ident
        )
        self._update_row = sql.SQL(
            "INSERT INTO {vt} AS e ({vk}, {v}, {hc}, {k}) VALUES ({one}, %b, %b, %b)"
            " ON CONFLICT ({vk}) DO UPDATE SET {v} = excluded.{v}, {hc} = excluded.{hc},"
            " {k} = excluded.{k} WHERE e.{k} IS NULL OR e.{k} = excluded.{k}"
        ).format(**ident)
        self._clear = sql.SQL(
            "DELETE FROM {vt} AS e WHERE e.{vk} = ANY({ids}) AND (e.{k} IS NULL OR e.{k} = %(key)s)"
        ).format(**ident)

    def _payload(
        self,
        ids: list[object],
        vectors: np.ndarray,
        hashes: list[bytes],
        model_key: int | None = None,
    ) -> bytes | bytearray:
        if self.key.kind == "integer":
            # the stage table's id is bigint; the destination table's, the source key's type
            id_type = self.key.type_name if self.to_table else "int8"
            return copy_binary_payload(
                np.asarray(ids, dtype=np.int64),
                vectors,
                hashes,
                model_key,
                id_type,
                self.halfvec,
                self._buffer,
            )
        return copy_binary_payload_keys(
            key_bytes(self.key, ids), vectors, hashes, model_key, self.halfvec
        )

    def _copy_all(self, ids: list[object], vectors: np.ndarray, hashes: list[bytes]) -> int:
        """COPY the whole batch, asking nothing: the primary key refuses a held row."""
        with self.conn.cursor() as cur, cur.copy(self._copy) as copy:
            _send(copy, self._payload(ids, vectors, hashes, self.model_key))
        return len(ids)

    def _write_table(self, ids: list[object], vectors: np.ndarray, hashes: list[bytes]) -> int:
        """COPY the rows the table does not hold; upsert the others (one probe of the key)."""
        text = self.key.to_text
        with self.conn.cursor() as cur:
            span = {"lo": text(ids[0]), "hi": text(ids[-1])}
            held: set[str] = set()
            if cur.execute(self._any_held, span).fetchone() != (False,):
                found = cur.execute(self._held, {"ids": [text(i) for i in ids]})
                held = {text(r[0]) for r in found}
            self._all_new = not held
            new = [i for i, row_id in enumerate(ids) if text(row_id) not in held]
            written = 0
            if len(new) == len(ids):
                written = self._copy_all(ids, vectors, hashes)
            elif new:
                with cur.copy(self._copy) as copy:
                    _send(
                        copy,
                        self._payload(
                            [ids[i] for i in new],
                            vectors[new],
                            [hashes[i] for i in new],
                            self.model_key,
                        ),
                    )
                written = len(new)
            if held:
                key = self.model_key
                rows = [
                    (text(i), v, h, key)
                    for v, h, i in zip(vectors, hashes, ids, strict=True)
                    if text(i) in held
                ]
                cur.executemany(self._update_row, rows, returning=False)
                written += cur.rowcount
        return written

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
        text = self.key.to_text
        if ids and self.to_table and self._all_new:
            try:
                with self.conn.transaction():
                    written = self._copy_all(ids, vectors, hashes)
                    self._clear_rows(clear_ids)
                return written
            except psycopg.errors.UniqueViolation:
                self._all_new = False  # rolled back whole: nothing of the batch was written
        written = 0
        with self.conn.transaction():
            if ids and self.to_table:
                written = self._write_table(ids, vectors, hashes)
            elif ids and not self.staged:
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
                        _send(copy, self._payload(ids, vectors, hashes))
                    bounds = {"key": self.model_key, "lo": text(ids[0]), "hi": text(ids[-1])}
                    cur.execute(self._update, bounds)
                    written = cur.rowcount
            self._clear_rows(clear_ids)
        return written

    def _clear_rows(self, clear_ids: list[object]) -> None:
        if clear_ids:
            text = self.key.to_text
            self.conn.execute(
                self._clear, {"ids": [text(i) for i in clear_ids], "key": self.model_key}
            )
