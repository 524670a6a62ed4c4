"""Adopt an existing embedding column as a registered space, without re-embedding it.

Every migration starts from a column that already holds vectors. Registering it gives the
new space something to be compared with, to retire on activation and to roll back to.
Nothing is written to the column. Before registering, the claim about its model is tested:
a random sample of rows is re-embedded with the declared model and compared with the stored
vectors; anything but a cosine of ~1 means another model wrote them, or the same model with
other settings (normalisation, `dimensions`, truncation), or from other text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ..checks.column import ColumnReport, evaluate_column
from ..config import SpaceConfig
from ..db.destination import destination_of
from ..db.introspect import indexes_on_column, inspect_table, space_sql
from ..db.migrations import apply_migrations, check_pgvector
from ..db.registry import SpaceRecord, check_registration, get_space
from ..errors import DatabaseError, SpaceConflictError
from ..providers import EmbeddingProvider
from .read_path import replace_read_view

SAMPLE_SEED = 0.4242  # setseed(): the same rows are sampled on every verification


@dataclass(frozen=True)
class SampleVerdict:
    sample_size: int
    min_cosine: float
    p05_cosine: float
    median_cosine: float
    threshold: float

    @property
    def passed(self) -> bool:
        return self.sample_size > 0 and self.min_cosine >= self.threshold

    def describe(self) -> str:
        return (
            f"cosine(stored, re-embedded) over {self.sample_size} sampled rows: min "
            f"{self.min_cosine:.4f}, p5 {self.p05_cosine:.4f}, median {self.median_cosine:.4f} "
            f"(needs >= {self.threshold})"
        )


@dataclass(frozen=True)
class Adoption:
    record: SpaceRecord
    column: ColumnReport
    sample: SampleVerdict
    index_name: str | None


def verify_sample(
    conn: psycopg.Connection, space: SpaceConfig, provider: EmbeddingProvider
) -> SampleVerdict:
    """Re-embed a random sample of rows and compare with their stored vectors."""
    query = sql.SQL(
        "SELECT x.txt, {tv}::real[] FROM {t} AS t CROSS JOIN LATERAL (SELECT {text} AS txt) x"
        " {vjoin} WHERE {tv} IS NOT NULL AND btrim(coalesce(x.txt, ''), E' \\t\\r\\n') <> ''"
        " ORDER BY random() LIMIT %s"
    ).format(**space_sql(space))
    with conn.transaction():
        conn.execute("SELECT setseed(%s)", (SAMPLE_SEED,))
        rows = conn.execute(query, (space.adoption.sample_size,)).fetchall()
    threshold = space.adoption.min_cosine
    if not rows:
        return SampleVerdict(0, 0.0, 0.0, 0.0, threshold)
    stored = np.asarray([r[1] for r in rows], dtype=np.float64)
    fresh = provider.embed([r[0] for r in rows]).vectors.astype(np.float64)
    if stored.shape != fresh.shape:
        return SampleVerdict(len(rows), -1.0, -1.0, -1.0, threshold)
    norms = np.linalg.norm(stored, axis=1) * np.linalg.norm(fresh, axis=1)
    norms[norms == 0] = 1.0
    cosine = np.sum(stored * fresh, axis=1) / norms
    return SampleVerdict(
        len(rows),
        float(cosine.min()),
        float(np.percentile(cosine, 5)),
        float(np.median(cosine)),
        threshold,
    )


def adopt_column(
    conn: psycopg.Connection, space: SpaceConfig, provider: EmbeddingProvider
) -> Adoption:
    """Verify an existing column and register it; raise, registering nothing, on any doubt.

    The space becomes `active` when its table has no active space yet (it is what
    applications query today), else `retired` (a rollback target).
    """
    check_pgvector(conn)
    info = inspect_table(conn, space)  # a column of another declared dimension is refused
    if info.target is None:
        raise DatabaseError(
            f"space {space.name!r}: column {destination_of(space).label} does not exist; "
            "adopt: true registers a column that already holds vectors"
        )
    identity = provider.identity
    check_registration(conn, space, identity)
    column = evaluate_column(conn, space, identity.key, provenance=False)
    broken = [v for k, v in column.verdicts.items() if k in ("uniform_dimension", "sane_vectors")]
    failed = [v for v in broken if not v.passed]
    if failed:
        raise SpaceConflictError(
            f"space {space.name!r} cannot be adopted: "
            + "; ".join(
                f"{v.name}: {v.description} (ids {v.metadata.get('example_ids')})" for v in failed
            )
        )
    sample = verify_sample(conn, space, provider)
    if not sample.passed:
        raise SpaceConflictError(
            f"space {space.name!r}: {identity.label()} does not reproduce the vectors stored in "
            f"{destination_of(space).label}: {sample.describe()}. The column was written "
            "by another model, or with other settings (normalize, dimensions, truncation) or "
            "from other text; declare the model that wrote it"
        )
    assert info.vectors_oid is not None  # the column exists
    valid = [i for i in indexes_on_column(conn, info.vectors_oid, space.target_column) if i.valid]
    index_name = valid[0].name if valid else None
    index_def = None
    if index_name:
        row = conn.execute(
            "SELECT pg_get_indexdef(%s::regclass)",
            (sql.Identifier(space.vector_schema, index_name).as_string(conn),),
        ).fetchone()
        index_def = row[0] if row else None
    report = {
        "sample": asdict(sample),
        "coverage": column.verdicts["complete"].metadata,
        "dimensions": column.verdicts["uniform_dimension"].metadata,
    }
    apply_migrations(conn)
    fingerprint = provider.fingerprint()
    with conn.transaction():
        conn.execute(
            "SELECT 1 FROM embedding_backfills.vector_spaces"
            " WHERE table_schema = %s AND table_name = %s FOR UPDATE",
            (space.schema_name, space.table_name),
        )
        active = conn.execute(
            "SELECT name FROM embedding_backfills.vector_spaces"
            " WHERE table_schema = %s AND table_name = %s AND status = 'active' AND name <> %s",
            (space.schema_name, space.table_name, space.name),
        ).fetchone()
        status = "retired" if active else "active"
        conn.execute(
            "INSERT INTO embedding_backfills.vector_spaces"
            " (name, table_schema, table_name, column_name, provider, model, revision,"
            "  dimensions, normalize, model_key, fingerprint, status, adopted, adoption_report,"
            "  index_name, index_expression, row_count, destination, vector_schema, vector_table,"
            "  storage, truncated_from, validated_at, activated_at, retired_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, true, %s, %s, %s, %s,"
            "  %s, %s, %s, %s, %s,"
            "  now(), CASE WHEN %s::text = 'active' THEN now() END,"
            "  CASE WHEN %s::text = 'retired' THEN now() END)"
            " ON CONFLICT (name) DO UPDATE SET adoption_report = EXCLUDED.adoption_report,"
            "  validated_at = now(), index_name = EXCLUDED.index_name,"
            "  index_expression = EXCLUDED.index_expression, row_count = EXCLUDED.row_count",
            (
                space.name, space.schema_name, space.table_name, space.target_column,
                identity.provider, identity.model, identity.revision, identity.dimensions,
                identity.normalize, identity.key, Jsonb(fingerprint.to_json()), status,
                Jsonb(report), index_name, index_def, column.vectors, space.destination,
                space.vector_schema, space.vector_table_name, space.storage,
                identity.truncated_from, status, status,
            ),
        )  # fmt: skip
        if status == "active":  # what applications query today: the read view shows it too
            replace_read_view(conn, space)
    record = get_space(conn, space.name)
    assert record is not None
    return Adoption(record, column, sample, index_name)
