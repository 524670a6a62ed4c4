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
    it. With `truncate_dimensions`, the model is wrapped to cut its vectors, unless it
    already returns that many (openai shortening on the server)."""
    provider = _model(config, limiter)
    k = config.truncate_dimensions
    if k is not None and provider.identity.dimensions != k:
        from .truncate import TruncatedProvider

        provider = TruncatedProvider(provider, k, config.normalize)
    return provider


def _model(config: ModelConfig, limiter: RateLimiter | None) -> EmbeddingProvider:
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
