"""Matryoshka truncation on the client: keep the first k components, re-normalise.

The one place a space's vectors are cut (`build_provider` wraps the model in it), so every
path that embeds (backfill, batch, fingerprint, shadow, read path) sees the same vectors.
An openai model that shortens on the server (`dimensions=`) is not wrapped: it already
returns k.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from .base import EmbeddingBatch, EmbeddingProvider, l2_normalize


class TruncatedProvider(EmbeddingProvider):
    """`inner`'s vectors cut to their first `k` components."""

    def __init__(self, inner: EmbeddingProvider, k: int, normalize: bool) -> None:
        if not 0 < k < inner.identity.dimensions:
            raise ValueError(f"cannot truncate {inner.identity.dimensions} dimensions to {k}")
        self.inner = inner
        self.k = k
        self.normalize = normalize
        self.concurrency = inner.concurrency
        # The fingerprint is computed from cut vectors too, so it differs from the full one's.
        self.identity = replace(
            inner.identity, dimensions=k, truncated_from=inner.identity.dimensions
        )

    def cut(self, vectors: np.ndarray) -> np.ndarray:
        """The first k components of each row, unit length again when `normalize` (a
        zero prefix stays zero rather than dividing by zero)."""
        prefix = np.ascontiguousarray(vectors[:, : self.k], dtype=np.float32)
        return l2_normalize(prefix) if self.normalize else prefix

    def _embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        batch = self.inner.embed(texts)  # checked at the model's own dimension
        batch.vectors = self.cut(batch.vectors)
        return batch

    def close(self) -> None:
        self.inner.close()


def innermost(provider: EmbeddingProvider) -> EmbeddingProvider:
    """The model behind a truncation, for the paths that talk to it directly (batch mode)."""
    return provider.inner if isinstance(provider, TruncatedProvider) else provider
