"""`smoke`: is the model endpoint serving what the space expects, and how fast?

Measures, with the fixed sentinel texts only (never a row): the dimension the endpoint
returns against the configured one; each sentinel's vector (finite, right dimension,
non-zero, unit norm when the space normalises); one batch call (count, and each sentinel's
batch vector equals its single-call vector, which catches order mix-ups and padding
bugs); latency percentiles over repeated calls; where the endpoint is; and whether the
model still matches the fingerprint recorded in the registry.

The report holds numbers and verdicts only: no text, no key, no URL credentials.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..checks.column import NORM_TOLERANCE
from ..config import SpaceConfig
from ..db.registry import get_space, registry_exists
from ..errors import DimensionMismatchError, ProviderError
from ..providers import SENTINEL_TEXTS, EmbeddingProvider, Fingerprint, build_provider
from ..providers.base import FINGERPRINT_MIN_COSINE
from . import NoProgress, Progress, read_only_connection
from .endpoint import Endpoint, endpoint_of

BATCH_SIZE = 32
DEFAULT_CALLS = 10


@dataclass(frozen=True)
class SentinelCheck:
    index: int  # 1-based position in SENTINEL_TEXTS; the text itself is never reported
    chars: int
    dimension: int | None
    finite: bool
    norm: float | None
    unit_norm: bool | None  # None when the space does not normalise

    @property
    def ok(self) -> bool:
        return bool(self.finite and self.norm and self.unit_norm is not False)

    def as_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            "chars": self.chars,
            "dimension": self.dimension,
            "finite": self.finite,
            "norm": None if self.norm is None else round(self.norm, 6),
            "nonzero": bool(self.norm),
            "unit_norm": self.unit_norm,
            "ok": self.ok,
        }


@dataclass(frozen=True)
class BatchCheck:
    size: int
    returned: int | None
    min_cosine: float | None  # sentinels: batch vector against single-call vector

    @property
    def ok(self) -> bool:
        return (
            self.returned == self.size
            and self.min_cosine is not None
            and self.min_cosine >= FINGERPRINT_MIN_COSINE
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "size": self.size,
            "returned": self.returned,
            "min_cosine": None if self.min_cosine is None else round(self.min_cosine, 6),
            "ok": self.ok,
        }


@dataclass(frozen=True)
class Latency:
    calls: int
    p50_ms: float
    p95_ms: float
    max_ms: float

    def as_dict(self) -> dict[str, object]:
        return {
            "calls": self.calls,
            "p50_ms": round(self.p50_ms, 3),
            "p95_ms": round(self.p95_ms, 3),
            "max_ms": round(self.max_ms, 3),
        }


@dataclass(frozen=True)
class FingerprintCheck:
    status: str  # match | mismatch | other-model | unregistered
    min_cosine: float | None = None
    registered: str | None = None  # digests only
    current: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("match", "unregistered")

    def as_dict(self) -> dict[str, object]:
        return {
            "status": self.status,
            "min_cosine": None if self.min_cosine is None else round(self.min_cosine, 6),
            "registered_digest": self.registered,
            "current_digest": self.current,
            "ok": self.ok,
        }


@dataclass
class SmokeReport:
    space: str
    model: str
    endpoint: Endpoint
    configured_dimension: int
    returned_dimension: int
    sentinels: list[SentinelCheck] = field(default_factory=list)
    batch: BatchCheck | None = None
    latency: Latency | None = None
    fingerprint: FingerprintCheck | None = None

    @property
    def verdicts(self) -> dict[str, bool]:
        """Every check that ran; the ones after a wrong dimension do not run."""
        verdicts = {"dimension": self.returned_dimension == self.configured_dimension}
        if self.sentinels:
            verdicts["sentinels"] = all(s.ok for s in self.sentinels)
        if self.batch is not None:
            verdicts["batch"] = self.batch.ok
        if self.fingerprint is not None:
            verdicts["fingerprint"] = self.fingerprint.ok
        return verdicts

    @property
    def passed(self) -> bool:
        return all(self.verdicts.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "space": self.space,
            "model": self.model,
            "endpoint": self.endpoint.as_dict(),
            "configured_dimension": self.configured_dimension,
            "returned_dimension": self.returned_dimension,
            "sentinels": [s.as_dict() for s in self.sentinels],
            "batch": None if self.batch is None else self.batch.as_dict(),
            "latency": None if self.latency is None else self.latency.as_dict(),
            "fingerprint": None if self.fingerprint is None else self.fingerprint.as_dict(),
            "verdicts": self.verdicts,
            "passed": self.passed,
        }


def returned_dimension(provider: EmbeddingProvider) -> int:
    """The dimension the model returns, also when it is not the configured one."""
    try:
        return int(provider.embed(list(SENTINEL_TEXTS[:1])).vectors.shape[1])
    except DimensionMismatchError as err:
        return err.returned


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / norms) if norms else 0.0


def check_sentinel(
    provider: EmbeddingProvider, index: int, normalize: bool
) -> tuple[SentinelCheck, np.ndarray | None]:
    text = SENTINEL_TEXTS[index]
    try:
        vector = provider.embed([text]).vectors[0].astype(np.float64)
    except ProviderError:  # NaN, infinity or a wrong count: the vector is unusable
        return SentinelCheck(index + 1, len(text), None, False, None, None), None
    norm = float(np.linalg.norm(vector))
    unit = abs(norm - 1) <= NORM_TOLERANCE if normalize else None
    return SentinelCheck(index + 1, len(text), len(vector), True, norm, unit), vector


def batch_inputs(size: int) -> tuple[list[str], list[int]]:
    """`size` inputs with the sentinels spread among fillers of growing length (padding
    differences show up as batch-vs-single mismatches); returns inputs and positions."""
    step = max(size // len(SENTINEL_TEXTS), 1)
    positions = [min(i * step, size - 1) for i in range(len(SENTINEL_TEXTS))]
    texts = [f"smoke filler {i}: " + "lorem ipsum " * (i % 9) for i in range(size)]
    for sentinel, pos in zip(SENTINEL_TEXTS, positions, strict=True):
        texts[pos] = sentinel
    return texts, positions


def check_batch(provider: EmbeddingProvider, singles: list[np.ndarray | None]) -> BatchCheck:
    size = max(BATCH_SIZE, len(SENTINEL_TEXTS))
    texts, positions = batch_inputs(size)
    try:
        vectors = provider.embed(texts).vectors.astype(np.float64)
    except ProviderError:
        return BatchCheck(size, None, None)
    cosines = [
        _cosine(vectors[pos], single)
        for pos, single in zip(positions, singles, strict=True)
        if single is not None
    ]
    return BatchCheck(size, len(vectors), min(cosines) if cosines else None)


def measure_latency(provider: EmbeddingProvider, calls: int, progress: Progress) -> Latency:
    """Wall time of `calls` single-input requests, cycling through the sentinels."""
    progress.step(f"timing {calls} calls", total=calls)
    times = []
    for i in range(calls):
        started = time.perf_counter()
        provider.embed([SENTINEL_TEXTS[i % len(SENTINEL_TEXTS)]])
        times.append((time.perf_counter() - started) * 1000)
        progress.advance()
    ms = np.asarray(times)
    return Latency(
        calls,
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 95)),
        float(ms.max()),
    )


def check_fingerprint_against_registry(
    space: SpaceConfig, provider: EmbeddingProvider, database_url: str | None
) -> FingerprintCheck:
    """Compare with the fingerprint recorded when the space was registered (read-only)."""
    with read_only_connection(database_url) as conn:
        record = get_space(conn, space.name) if registry_exists(conn) else None
    if record is None or not record.fingerprint:
        return FingerprintCheck("unregistered")
    current = provider.fingerprint()
    registered = Fingerprint.from_json(record.fingerprint)
    if record.model_key != provider.identity.key:
        return FingerprintCheck("other-model", None, registered.digest, current.digest)
    cosine = registered.min_cosine(current)
    status = "match" if registered.matches(current) else "mismatch"
    return FingerprintCheck(status, cosine, registered.digest, current.digest)


def smoke_space(
    space: SpaceConfig,
    *,
    calls: int = DEFAULT_CALLS,
    database_url: str | None = None,
    progress: Progress | None = None,
) -> SmokeReport:
    """Measure the space's model endpoint; errors (unreachable, bad key) raise."""
    progress = progress or NoProgress()
    progress.step("loading the model")
    provider = build_provider(space.model)
    try:
        progress.step("measuring the returned dimension")
        report = SmokeReport(
            space=space.name,
            model=provider.identity.label(),
            endpoint=endpoint_of(space.model),
            configured_dimension=space.model.stored_dimensions,
            returned_dimension=returned_dimension(provider),
        )
        if not report.verdicts["dimension"]:
            return report  # every other check would only repeat the dimension error
        progress.step("embedding the sentinel texts one by one")
        singles = []
        for index in range(len(SENTINEL_TEXTS)):
            check, vector = check_sentinel(provider, index, space.model.normalize)
            report.sentinels.append(check)
            singles.append(vector)
        progress.step(f"one batch call of {BATCH_SIZE} inputs")
        report.batch = check_batch(provider, singles)
        if calls > 0:
            report.latency = measure_latency(provider, calls, progress)
        progress.step("comparing with the registered fingerprint")
        report.fingerprint = check_fingerprint_against_registry(space, provider, database_url)
        return report
    finally:
        provider.close()
