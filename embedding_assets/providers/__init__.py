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
from .pacing import LocalRateLimiter, PostgresRateLimiter, RateLimiter


def build_provider(config: ModelConfig, limiter: RateLimiter | None = None) -> EmbeddingProvider:
    """Instantiate the configured provider; heavy imports happen only for the one in use.

    `limiter` paces a hosted endpoint (default: in this process only); local models ignore
    it."""
    if config.provider == "hash":
        from .hash import HashProvider

        return HashProvider(config)
    if config.provider == "sentence-transformers":
        from .sentence_transformers import SentenceTransformersProvider

        return SentenceTransformersProvider(config)
    from .openai import OpenAIProvider

    return OpenAIProvider(config, limiter)


__all__ = [
    "SENTINEL_TEXTS",
    "EmbeddingBatch",
    "EmbeddingProvider",
    "Fingerprint",
    "LocalRateLimiter",
    "ModelIdentity",
    "PostgresRateLimiter",
    "RateLimiter",
    "build_provider",
]
