"""Configuration drift and silent model swaps: the checks a careful service runs at start-up.

Both are verdicts, never run requests: re-embedding cannot fix a column whose configuration
changed under it, or an endpoint that now serves another model. A person must decide.
Every evaluation is also written to the registry (`record_drift_verdict`), so applications
see it where they look the space up (`active_spaces`, `active_column(...)`).
"""

from __future__ import annotations

import psycopg

from ..checks.column import CheckVerdict
from ..config import SpaceConfig
from ..db.destination import destination_of
from ..db.introspect import column_info, relation
from ..db.registry import SpaceRecord, record_drift_verdict
from ..errors import ProviderError
from ..providers import EmbeddingProvider, Fingerprint
from ..providers.base import FINGERPRINT_MIN_COSINE

CONFIG_MATCHES = "config_matches"
MODEL_FINGERPRINT = "model_fingerprint"
DRIFT_CHECKS = (CONFIG_MATCHES, MODEL_FINGERPRINT)


def config_verdict(
    conn: psycopg.Connection, space: SpaceConfig, provider: EmbeddingProvider, record: SpaceRecord
) -> CheckVerdict:
    """The configured model, the registry and the column's declared dimension agree."""
    identity = provider.identity
    dims = space.model.stored_dimensions
    where = destination_of(space).label
    problems: list[str] = []
    declared: int | str = "missing"
    if record.model_key != identity.key:
        problems.append(
            f"the configuration says {identity.label()} but space {space.name!r} was registered "
            f"for {record.identity.label()}; restore the configuration, or declare a new space "
            "with a new target_column for the new model"
        )
    table = relation(conn, space.vector_schema, space.vector_table_name)
    column = column_info(conn, table[0], space.target_column) if table else None
    if column is None:
        problems.append(f"column {where} no longer exists; rebuild the space or roll back")
    elif column.type_name != space.storage:  # vector or halfvec, as the space was built
        declared = column.formatted
        problems.append(f"column {where} is now {column.formatted}, not {space.storage}({dims})")
    else:
        declared = column.typmod if column.typmod > 0 else "none"
        if column.typmod not in (dims, -1):
            problems.append(
                f"column {where} is declared {column.formatted} but the space is "
                f"configured for {dims} dimensions: the column was altered. Restore it (retention "
                "backup) or roll back to the previous space"
            )
    return CheckVerdict(
        CONFIG_MATCHES,
        not problems,
        "; ".join(problems) or f"configuration, registry and {where} agree ({identity.label()})",
        {
            "configured_dimension": dims,
            "registered_dimension": record.dimensions,
            "declared_dimension": declared,
            "configured_model": identity.label(),
            "registered_model": record.identity.label(),
        },
    )


def fingerprint_verdict(
    space: SpaceConfig, provider: EmbeddingProvider, record: SpaceRecord
) -> CheckVerdict:
    """The endpoint still returns the registered vectors for the sentinel texts."""
    registered = Fingerprint.from_json(record.fingerprint)
    try:
        current = provider.fingerprint()
    except ProviderError as err:
        return CheckVerdict(
            MODEL_FINGERPRINT,
            False,
            f"could not compute the fingerprint of {provider.identity.label()}: {err}",
            {"registered_fingerprint": registered.digest},
        )
    cosine = registered.min_cosine(current)
    passed = cosine >= FINGERPRINT_MIN_COSINE
    return CheckVerdict(
        MODEL_FINGERPRINT,
        passed,
        f"the model returns the registered vectors for the sentinel texts (min cosine {cosine:.4f})"
        if passed
        else (
            f"silent model swap: {provider.identity.label()} now returns different vectors for "
            f"the sentinel texts (min cosine {cosine:.4f} < {FINGERPRINT_MIN_COSINE}). The "
            "endpoint serves another model under the same name and dimension; restore the "
            "original model, or build a new space for the new one. No runs are started."
        ),
        {
            "min_cosine": round(cosine, 6),
            "registered_fingerprint": registered.digest,
            "current_fingerprint": current.digest,
        },
    )


def short_reason(verdict: CheckVerdict) -> str:
    """A failed verdict in a few words, from its metadata, for the registry.

    Built from the numbers and identities the check recorded, never from its description:
    a provider's error text may quote the endpoint, a request or a key.
    """
    meta = verdict.metadata
    if verdict.name == MODEL_FINGERPRINT:
        cosine = meta.get("min_cosine")
        if not isinstance(cosine, float | int):
            return "the fingerprint could not be computed (endpoint failing or unreachable)"
        return (
            f"silent model swap: the sentinel vectors changed (min cosine {cosine:.4f} "
            f"< {FINGERPRINT_MIN_COSINE})"
        )
    reasons: list[str] = []
    if meta.get("configured_model") != meta.get("registered_model"):
        reasons.append(
            f"configured {meta.get('configured_model')}, registered {meta.get('registered_model')}"
        )
    declared, dims = meta.get("declared_dimension"), meta.get("configured_dimension")
    if declared == "missing":
        reasons.append("the target column no longer exists")
    elif isinstance(declared, str) and declared != "none":
        reasons.append(f"the target column is now {declared}")
    elif isinstance(declared, int) and declared != dims:
        reasons.append(f"the target column has {declared} dimensions, the space has {dims}")
    return "; ".join(reasons) or "configuration and registry disagree"


def identity_verdicts(
    conn: psycopg.Connection, space: SpaceConfig, provider: EmbeddingProvider, record: SpaceRecord
) -> list[CheckVerdict]:
    """Both verdicts, written to the registry as the space's latest drift verdict.

    Recorded here so that every evaluation (the drift sensor tick, the on-demand checks)
    updates what applications read, whatever the caller does with the verdicts.
    """
    verdicts = [
        config_verdict(conn, space, provider, record),
        fingerprint_verdict(space, provider, record),
    ]
    record_drift_verdict(
        conn, record.space_id, {v.name: short_reason(v) for v in verdicts if not v.passed}
    )
    return verdicts
