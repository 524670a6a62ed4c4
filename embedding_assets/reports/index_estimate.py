"""How long the HNSW build will take, how large the index is and the memory it needs.

From builds measured on this project's reference machine (2 vCPU, embedded PostgreSQL 18 +
pgvector 0.8, m=16, ef_construction=64, max_parallel_maintenance_workers 2, the graph in
memory). Sizes and memory come from `benchmarks/index_curve.py` (random unit vectors; Dec
2026); times from the whole builds `benchmarks/scale.py` ran on a quiet machine (hash
vectors of real text, `CREATE INDEX CONCURRENTLY` with its validation scan):

    dims   rows        seconds   µs per row*log2(rows)   index bytes/row   graph bytes/row
    384       10,000       7.8     58.5 (index_curve)      2,049             2,253
    384      100,000      41.5     25.0                    2,048
    384      100,000      44.9     27.0                    2,048
    384    5,000,000   3,528.5     31.7                    2,048
    1024      10,000      18.1    136 (index_curve)        8,193             4,813
    1024     100,000      88.6     53.3                    8,192

An HNSW insert searches the graph (about log N hops of ef_construction candidates, each a
distance over `dims` floats), so the build is ~ N log2 N distance computations; the cost
per step still grows a little with N (31.7 µs at 5M against 26 at 100k: the graph outgrows
the CPU caches), so the constant is the largest build's, where the estimate matters:

    seconds  = US_PER_STEP_384 * (1 + DIM_SLOPE * (dims - 384)) * 1e-6
               * N * log2(N) * ef_construction / 64
    size     = ceil(N / per_page) * 8 kB, per_page = floor(8160 / (vector + NEIGHBOR_BYTES))
               (an element and its neighbour list share a page: 4 per page at 384 dims,
               1 at 1024, which is why 1024 dims cost 8 kB a row)
    memory   = N * (vector + GRAPH_NEIGHBOR_BYTES * m / 16)   (the graph, in memory)

So 1.00x at 5M, 1.22x at 100k (both dims), and low for builds of seconds, whose fixed
costs dominate (0.5x at 10k). A build beside other work is slower: 1M rows at 384 dims took
883 s beside a test suite and 1,148 s at load 3-5, against 632 s estimated.

graph bytes/row is maintenance_work_mem / the tuples after which pgvector's NOTICE said the
graph no longer fit (an 8MB build of 10k rows). Past `memory`, pgvector builds the rest of
the graph on disk, many times slower: `plan` flags a maintenance_work_mem below it. A
machine with more, or unshared, cores is faster: rerun the builds there. An estimate.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..config import IndexConfig

#: µs per (row x log2 rows) at 384 dims: the 5M-row build of the module docstring.
US_PER_STEP_384 = 31.7
#: How much more a step costs per dimension past 384: the 100k builds, 88.6 s at 1024 dims
#: against 43.2 s (the mean of two) at 384, on the same machine in the same hour:
#: (88.6 / 43.2 - 1) / (1024 - 384).
DIM_SLOPE = 0.00164
#: An element's neighbour list and tuple headers at m=16, bytes: 4 elements of 1,544-byte
#: vectors fill a page at 384 dims, 1 of 4,104 at 1024 (8,160 usable bytes a page).
NEIGHBOR_BYTES = 490
PAGE_BYTES = 8192
PAGE_USABLE_BYTES = 8160
#: Graph memory per row beyond the vector, at m=16: 2,253 measured - (4 * 384 + 8); the
#: same 709 at 1024 dims (4,813 - 4,104).
GRAPH_NEIGHBOR_BYTES = 709

_UNITS = {"kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4, "": 1024}


def memory_bytes(setting: str) -> int:
    """A PostgreSQL memory setting (`1GB`, `512 MB`, `65536` = kB) in bytes."""
    match = re.fullmatch(r"([0-9]+) ?(kB|MB|GB|TB)?", setting.strip())
    if match is None:
        raise ValueError(f"not a memory setting: {setting!r}")
    return int(match.group(1)) * _UNITS[match.group(2) or ""]


@dataclass(frozen=True)
class IndexEstimate:
    rows: int  # vectors the index will hold
    dims: int
    seconds: float
    size_bytes: int
    memory_bytes: int  # maintenance_work_mem for the graph to stay in memory
    configured_bytes: int  # index.maintenance_work_mem

    @property
    def fits(self) -> bool:
        return self.configured_bytes >= self.memory_bytes

    def as_dict(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "dimensions": self.dims,
            "seconds": round(self.seconds, 1),
            "size_bytes": self.size_bytes,
            "maintenance_work_mem_needed_bytes": self.memory_bytes,
            "maintenance_work_mem_configured_bytes": self.configured_bytes,
            "fits_in_memory": self.fits,
        }


def estimate_index(
    rows: int, dims: int, index: IndexConfig, storage: str = "vector"
) -> IndexEstimate:
    """The module docstring's curve for an index over `rows` vectors of `dims` dims.
    A halfvec space, and a vector one above 2000 dims (indexed as `::halfvec`), holds 2
    bytes a component (measured: a halfvec HNSW is 0.57x the vector one at 384 dims, 0.33x
    at 1024, where a page fits 3 elements instead of 1)."""
    component = 2 if storage == "halfvec" or dims > 2000 else 4
    vector = component * dims + 8
    steps = rows * math.log2(rows) if rows > 1 else float(rows)
    per_step = max(US_PER_STEP_384 * (1 + DIM_SLOPE * (dims - 384)), 1.0)
    seconds = per_step * 1e-6 * steps * index.ef_construction / 64
    per_page = max(1, int(PAGE_USABLE_BYTES // (vector + NEIGHBOR_BYTES * index.m / 16)))
    return IndexEstimate(
        rows=rows,
        dims=dims,
        seconds=seconds,
        size_bytes=math.ceil(rows / per_page) * PAGE_BYTES,
        memory_bytes=round(rows * (vector + GRAPH_NEIGHBOR_BYTES * index.m / 16)),
        configured_bytes=memory_bytes(index.maintenance_work_mem),
    )
