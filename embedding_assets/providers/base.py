"""The provider interface: texts in, checked float32 vectors out, plus who made them.

A provider's `identity` is the contract a vector space is built on: provider, model,
revision, dimension, normalisation and, for a truncated space, the dimension it was cut
from. Its 64-bit `key` is stored next to every vector.
The `fingerprint` (vectors for fixed sentinel texts) catches what the identity cannot:
an endpoint that silently serves another model under the same name and dimension.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import DimensionMismatchError, ProviderError

# Fixed forever: changing one changes every recorded fingerprint. English and Polish, short
# and long, accents included, because endpoints differ most on tokenisation edge cases.
SENTINEL_TEXTS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "PostgreSQL stores each row's embedding next to its text so that search stays consistent.",
    "Zażółć gęślą jaźń.",
    "Pchnąć w tę łódź jeża lub ośm skrzyń fig; każdy wektor musi pochodzić z jednego modelu.",
    "ok",
)

# Two fingerprints of the same model on different hardware agree to ~1e-6; another model
# scores far below this.
FINGERPRINT_MIN_COSINE = 0.999


@dataclass(frozen=True)
class ModelIdentity:
    provider: str
    model: str
    revision: str | None
    dimensions: int  # of the vectors the provider hands out (stored)
    normalize: bool
    # The model's own dimension when `dimensions` is a prefix of it (Matryoshka truncation,
    # by the client or the server): a truncated space is not the full one.
    truncated_from: int | None = None

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        if self.truncated_from is None:
            del data["truncated_from"]  # keeps every key recorded before truncation existed
        return data

    @property
    def key(self) -> int:
        """Signed 64-bit digest of the identity: stored per row as the vector's provenance."""
        canonical = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def label(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        of = f" of {self.truncated_from}d" if self.truncated_from else ""
        return f"{self.provider}:{self.model}{rev} ({self.dimensions}d{of})"


@dataclass(frozen=True)
class Fingerprint:
    """The provider's vectors for SENTINEL_TEXTS, rounded, plus a digest for display."""

    vectors: tuple[tuple[float, ...], ...]
    digest: str = field(default="")

    @classmethod
    def from_array(cls, array: np.ndarray) -> Fingerprint:
        rounded = tuple(tuple(round(float(x), 6) for x in row) for row in array)
        digest = hashlib.sha256(np.asarray(rounded, dtype=np.float32).tobytes()).hexdigest()
        return cls(rounded, digest[:16])

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Fingerprint:
        vectors = tuple(tuple(float(x) for x in row) for row in data["vectors"])  # type: ignore[union-attr]
        return cls(vectors, str(data.get("digest", "")))

    def to_json(self) -> dict[str, object]:
        return {
            "vectors": [list(v) for v in self.vectors],
            "digest": self.digest,
            "texts": len(self.vectors),
        }

    def min_cosine(self, other: Fingerprint) -> float:
        """Lowest cosine similarity over the sentinel texts (1.0 means the same model)."""
        a = np.asarray(self.vectors, dtype=np.float64)
        b = np.asarray(other.vectors, dtype=np.float64)
        if a.shape != b.shape:
            return -1.0
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        norms[norms == 0] = 1.0
        return float(np.min(np.sum(a * b, axis=1) / norms))

    def matches(self, other: Fingerprint) -> bool:
        return self.min_cosine(other) >= FINGERPRINT_MIN_COSINE


@dataclass
class EmbeddingBatch:
    """One call's result: vectors in input order, and what the provider did to the inputs."""

    vectors: np.ndarray  # (n, dimensions) float32
    truncated: int = 0
    tokens: int | None = None


class EmbeddingProvider(ABC):
    """Texts in, (n, dimensions) float32 out. Implementations must be safe to reuse."""

    identity: ModelIdentity
    # Calls of `embed` worth keeping in flight at once (a hosted endpoint's requests in
    # flight); 1 for a local model, which is busy with one batch at a time.
    concurrency: int = 1

    @abstractmethod
    def _embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        """Embed non-empty texts, truncating per the provider's rule."""

    def embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        """Embed and verify shape and values before anything can be written."""
        if not texts:
            return EmbeddingBatch(np.zeros((0, self.identity.dimensions), dtype=np.float32))
        batch = self._embed(texts)
        batch.vectors = check_vectors(batch.vectors, len(texts), self.identity)
        return batch

    def fingerprint(self) -> Fingerprint:
        return Fingerprint.from_array(self.embed(SENTINEL_TEXTS).vectors)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients or models; default: nothing to release."""


def check_vectors(vectors: object, expected_rows: int, identity: ModelIdentity) -> np.ndarray:
    """Reject anything that is not exactly (rows, dimensions) of finite floats."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != expected_rows:
        raise ProviderError(
            f"{identity.label()} returned {array.shape[0] if array.ndim else 0} vectors for "
            f"{expected_rows} inputs; the endpoint is not behaving like an embeddings API"
        )
    if array.shape[1] != identity.dimensions:
        raise DimensionMismatchError(
            f"{identity.label()} returned {array.shape[1]}-dimensional vectors but the space is "
            f"configured for {identity.dimensions}; set model.dimensions to what the model "
            "returns (and model.truncate_dimensions to store fewer), or (openai) set "
            "send_dimensions: always so the server shortens them. Nothing was written.",
            returned=int(array.shape[1]),
            configured=identity.dimensions,
        )
    if not np.isfinite(array).all():
        raise ProviderError(f"{identity.label()} returned NaN or infinite values; nothing written")
    return np.ascontiguousarray(array)


def l2_normalize(array: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (array / norms).astype(np.float32, copy=False)
