"""`hash`: deterministic pseudo-random vectors from the text.

For tests, demos and benchmarks: any dimension, no model, no network, and the same text
always gives the same vector. It carries no meaning, which makes it a useful "bad model"
baseline. Vectors are computed for a whole batch at once with numpy, so the provider is
never what a benchmark of the write path measures.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from ..config import ModelConfig
from .base import EmbeddingBatch, EmbeddingProvider, ModelIdentity, l2_normalize

DEFAULT_MAX_WORDS = 8192
# A text's 6-byte digest picks one row from each of 6 tables of 256 random vectors; their sum
# is the text's vector: 256**6 distinct vectors for the cost of six gathers per batch.
_TABLES = 6


class HashProvider(EmbeddingProvider):
    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.max_words = config.max_input_tokens or DEFAULT_MAX_WORDS
        self.identity = ModelIdentity(
            provider="hash",
            model=config.name,
            revision=config.revision or "v2",
            dimensions=config.dimensions,
            normalize=config.normalize,
        )
        # The model name seeds the tables and keys the digest: two hash "models" give
        # unrelated spaces.
        self._key = hashlib.blake2b(config.name.encode(), digest_size=16).digest()
        seed = int.from_bytes(self._key, "little")
        rng = np.random.Generator(np.random.PCG64(seed))
        self._tables = rng.standard_normal((_TABLES, 256, config.dimensions), dtype=np.float32)

    def _embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        truncated = 0
        digests = bytearray()
        for text in texts:
            if len(text) > self.max_words:  # cheap pre-test; the rule is whitespace words
                words = text.split()
                if len(words) > self.max_words:
                    text = " ".join(words[: self.max_words])
                    truncated += 1
            digests += hashlib.blake2b(text.encode(), key=self._key, digest_size=_TABLES).digest()
        picks = np.frombuffer(bytes(digests), dtype=np.uint8).reshape(len(texts), _TABLES)
        out = self._tables[0][picks[:, 0]]
        for t in range(1, _TABLES):
            out += self._tables[t][picks[:, t]]
        if self.identity.normalize:
            out = l2_normalize(out)
        return EmbeddingBatch(out, truncated=truncated)
