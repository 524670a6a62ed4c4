"""Embedding providers: one small interface (`EmbeddingProvider`), three implementations."""

from __future__ import annotations

from ..config import ModelConfig
from .base import (
    SENTINEL_TEXTS,
    EmbeddingBatch,
    EmbeddingProvider,
    Fingerprint,
    ModelIdentity,
)


def build_provider(config: ModelConfig) -> EmbeddingProvider:
    """Instantiate the configured provider; heavy imports happen only for the one in use."""
    if config.provider == "hash":
        from .hash import HashProvider

        return HashProvider(config)
    if config.provider == "sentence-transformers":
        from .sentence_transformers import SentenceTransformersProvider

        return SentenceTransformersProvider(config)
    from .openai import OpenAIProvider

    return OpenAIProvider(config)


__all__ = [
    "SENTINEL_TEXTS",
    "EmbeddingBatch",
    "EmbeddingProvider",
    "Fingerprint",
    "ModelIdentity",
    "build_provider",
]
