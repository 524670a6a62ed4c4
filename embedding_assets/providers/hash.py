"""`hash`: deterministic pseudo-random vectors from the text.

For tests, demos and benchmarks: any dimension, no model, no network, and the same text
always gives the same vector. It carries no meaning, which makes it a useful "bad model"
baseline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from ..config import ModelConfig
from .base import EmbeddingBatch, EmbeddingProvider, ModelIdentity, l2_normalize

DEFAULT_MAX_WORDS = 8192


class HashProvider(EmbeddingProvider):
    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.max_words = config.max_input_tokens or DEFAULT_MAX_WORDS
        self.identity = ModelIdentity(
            provider="hash",
            model=config.name,
            revision=config.revision or "v1",
            dimensions=config.dimensions,
            normalize=config.normalize,
        )
        # The model name salts the hash: two hash "models" give unrelated spaces.
        self._salt = config.name.encode()

    def _embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        dims = self.identity.dimensions
        out = np.empty((len(texts), dims), dtype=np.float32)
        truncated = 0
        for i, text in enumerate(texts):
            words = text.split()
            if len(words) > self.max_words:  # the provider's rule: whitespace words
                text = " ".join(words[: self.max_words])
                truncated += 1
            seed = hashlib.blake2b(text.encode(), key=self._salt[:64], digest_size=16).digest()
            rng = np.random.Generator(np.random.PCG64(int.from_bytes(seed, "little")))
            out[i] = rng.standard_normal(dims, dtype=np.float32)
        if self.identity.normalize:
            out = l2_normalize(out)
        return EmbeddingBatch(out, truncated=truncated)
