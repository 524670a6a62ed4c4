"""How much disk and WAL a backfill writes: an order-of-magnitude estimate, per row.

Per embedded row the backfill UPDATEs three columns. The bytes involved:

    V = 4 * dims + 8        the vector datum (pgvector: 4-byte varlena header, int16 dim,
                            int16 unused, float4 components; halfvec: 2 * dims + 8)
    P = 33 + 8              provenance: sha256 bytea (32 bytes + 1-byte short header) and
                            the bigint model key
    T = 24 + 4              a heap tuple's header (23, aligned) and its line pointer

Vectors above 495 dims (V > 1988 bytes) push the tuple past PostgreSQL's ~2 kB TOAST
threshold and are stored out of line: 18 bytes stay in the row, and the TOAST table holds
ceil(V / 1996) chunks of V bytes in total, each chunk costing 60 more (its own T, chunk id
and sequence, varlena header, and a TOAST-index entry). So per row:

    inline = 18 if toasted else V
    toast  = V + 60 * ceil(V / 1996) if toasted else 0
    added  = inline + P + toast                 growth once dead tuples are vacuumed
    peak   = R + inline + P + toast             before vacuum: UPDATE writes a whole new
                                                row version (R = the table's current heap
                                                bytes per row, overhead included) while
                                                the old one stays until vacuum
    wal    = peak + 50                          the new tuple plus WAL record headers and
                                                the primary-key index entry of a non-HOT
                                                update

With `destination: table` each embedded row is a new row of the destination table instead,
and the source table does not change at all (no new row version, no dead tuple):

    added  = T + K + inline + P + toast + I     K: the key (8 for bigint, 16 for uuid, the
                                                average length for text), I = 20: its entry
                                                in the primary-key index
    peak   = added                              nothing waits for vacuum
    wal    = added + 50                         and no dead tuple to reclaim

Each UPDATE leaves the old row version dead: `dead_tuples` = rows updated, until (auto)vacuum
reclaims them; the table's size stays at `peak` after that, the space reused by later
writes, unless VACUUM FULL or pg_repack rewrites it.

The vacuum that reclaims them logs again: on a table large enough to see checkpoints during
the backfill, about every page of it as a full-page image (`wal_with_vacuum` = wal + the
table's current heap and TOAST bytes + peak growth; measured once, at 1M rows of 384 dims:
6,182 MB against 6,958 MB estimated (1.13x), `benchmarks/scale.py`). A small backfill that ends
before autovacuum runs writes about `wal` (0.83x at 100k); its vacuum comes later.

An insert-only destination table is vacuumed too (autovacuum's insert threshold, PostgreSQL
13+): it sets the visibility map and hint bits, and with data checksums on (initdb's default
since PostgreSQL 18) the first such change to a page after a checkpoint logs the whole page.
So `wal_with_vacuum` = wal + the destination's own bytes, about one full-page image per page
it fills (measured at 384 dims: 2,915 MB against 3,332 MB estimated at 1M rows, 1.14x; 17,496
MB against 16,660 MB at 5M, 0.95x; `wal` alone said 0.58x and 0.48x).

Checkpoints: the server starts one each time `max_wal_size` of WAL has been written
(`checkpoints_requested` ~ wal_with_vacuum / max_wal_size), and after each, the first change
to every page logs it whole again. At 5M rows of 384 dims (`destination: table`) the 1GB
default requested 34 checkpoints and the backfill wrote 20,194 MB of WAL; with max_wal_size
16GB, none, 11,496 MB (0.57x), and its runs embedded 1.46x faster. Hence the advice to raise
it when this count is more than one.

Not included in `wal`: full-page images (the first change to each page after a checkpoint logs the
whole 8 kB page: up to the table's size again per checkpoint interval), a wide row pushing
a shorter vector out of line too, and compression (floats barely compress).
"""

from __future__ import annotations

from dataclasses import dataclass

TOAST_MAX_INLINE_DIMS = 495
TOAST_CHUNK_BYTES = 1996
TOAST_CHUNK_OVERHEAD = 60
TOAST_POINTER_BYTES = 18
PROVENANCE_BYTES = 33 + 8
WAL_RECORD_OVERHEAD = 50
TUPLE_OVERHEAD = 24 + 4
INDEX_ENTRY_BYTES = 20


@dataclass(frozen=True)
class StorageEstimate:
    rows: int
    dims: int
    vector_bytes: int  # V
    toasted: bool
    added_bytes_per_row: int
    peak_bytes_per_row: int
    wal_bytes_per_row: int
    destination: str = "column"
    source_growth_bytes_per_row: int = 0  # what the source table itself grows by, vacuumed
    table_bytes: int = 0  # heap + TOAST now (pg_table_size), what the vacuum pass re-logs
    max_wal_size_bytes: int = 0  # the server's setting; 0 when unknown

    @property
    def checkpoints_requested(self) -> int | None:
        """Checkpoints the backfill's WAL alone would start (each then re-logs pages whole)."""
        if not self.max_wal_size_bytes:
            return None
        return self.wal_with_vacuum_bytes // self.max_wal_size_bytes

    @property
    def wal_with_vacuum_bytes(self) -> int:
        if self.destination == "table":  # each new page logged once more, whole
            return self.wal_bytes + self.peak_bytes
        return self.wal_bytes + self.table_bytes + self.peak_bytes

    @property
    def dead_tuples(self) -> int:
        """Old row versions left by the UPDATEs (column destination), before vacuum."""
        return 0 if self.destination == "table" else self.rows

    @property
    def added_bytes(self) -> int:
        return self.rows * self.added_bytes_per_row

    @property
    def peak_bytes(self) -> int:
        return self.rows * self.peak_bytes_per_row

    @property
    def wal_bytes(self) -> int:
        return self.rows * self.wal_bytes_per_row

    def as_dict(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "dimensions": self.dims,
            "vector_bytes": self.vector_bytes,
            "toasted": self.toasted,
            "added_bytes_per_row": self.added_bytes_per_row,
            "added_bytes": self.added_bytes,
            "peak_bytes": self.peak_bytes,
            "wal_bytes": self.wal_bytes,
            "wal_with_vacuum_bytes": self.wal_with_vacuum_bytes,
            "dead_tuples": self.dead_tuples,
            "destination": self.destination,
            "source_table_growth_bytes": self.rows * self.source_growth_bytes_per_row,
            "full_page_images_included": False,
            "max_wal_size_bytes": self.max_wal_size_bytes or None,
            "checkpoints_requested": self.checkpoints_requested,
        }


def estimate_storage(
    rows: int,
    dims: int,
    heap_bytes_per_row: int,
    table_bytes: int = 0,
    *,
    destination: str = "column",
    key_bytes: int = 8,
    storage: str = "vector",
    max_wal_size_bytes: int = 0,
) -> StorageEstimate:
    """The module docstring's formula for `rows` embedded rows of `dims`-d vectors."""
    vector = (2 if storage == "halfvec" else 4) * dims + 8
    toasted = vector > 4 * TOAST_MAX_INLINE_DIMS + 8
    inline = TOAST_POINTER_BYTES if toasted else vector
    chunks = -(-vector // TOAST_CHUNK_BYTES)
    toast = vector + TOAST_CHUNK_OVERHEAD * chunks if toasted else 0
    added = inline + PROVENANCE_BYTES + toast
    if destination == "table":  # a new row in the destination; the source stays as it is
        added += TUPLE_OVERHEAD + key_bytes + INDEX_ENTRY_BYTES
        peak, source_growth = added, 0
    else:  # a new version of the whole row, the old one dead until vacuum
        peak, source_growth = heap_bytes_per_row + added, added
    return StorageEstimate(
        rows=rows,
        dims=dims,
        vector_bytes=vector,
        toasted=toasted,
        added_bytes_per_row=added,
        peak_bytes_per_row=peak,
        wal_bytes_per_row=peak + WAL_RECORD_OVERHEAD,
        destination=destination,
        source_growth_bytes_per_row=source_growth,
        table_bytes=table_bytes,
        max_wal_size_bytes=max_wal_size_bytes,
    )
