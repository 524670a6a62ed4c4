"""Models known to be Matryoshka-trained: a prefix of their vector is itself an embedding.

Cutting any other model's vectors to a prefix throws away an arbitrary part of what it
learned; config refuses it unless the space says `truncation: allow`. Matched on the last
path component, case-insensitive, so a local copy (`/models/nomic-embed-text-v1.5`) counts.
"""

from __future__ import annotations

MATRYOSHKA_MODELS = frozenset(
    {
        "text-embedding-3-small",
        "text-embedding-3-large",
        "nomic-embed-text-v1.5",
        "mxbai-embed-large-v1",
        "qwen3-embedding-0.6b",
        "qwen3-embedding-4b",
        "qwen3-embedding-8b",
        "snowflake-arctic-embed-m-v1.5",
        "snowflake-arctic-embed-l-v2.0",
        "embeddinggemma-300m",
        "jina-embeddings-v3",
    }
)


def is_matryoshka(name: str) -> bool:
    """Whether `name` (a model id or a local path) is a known Matryoshka-trained model."""
    return name.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].lower() in MATRYOSHKA_MODELS
