"""Shadow validation: does a new space retrieve as well as the one applications use today?

Two spaces are never mixed: every query is embedded by each space's own model and searched
only in that space's own column, with the space's distance operator (from `index.opclass`)
and the expression its index is built on (a `halfvec` cast above 2000 dimensions), so the
search is the one an application would run. The baseline ("old") space is
`shadow.compare_to` if set, else the table's active space; when the new space is itself
the active one, the space it replaced (the most recently retired). Its model comes from
the project configuration and must be the identity the registry recorded for it.

**Labelled mode** (`shadow.queries_file`, JSON Lines, UTF-8): one object per non-blank line,

    {"query": "serialize an object to a JSON string", "relevant": ["json.dumps"]}

`query` is the text to search for; `relevant` lists values of `shadow.key_column` (default:
the id column) naming the rows a good search returns, compared as text. A natural key keeps
the file valid when ids are reassigned (the demo corpus differs between Python versions).
Every row whose key matches is relevant. Values matching no row are dropped and counted
(`relevant_unresolved`); a query left with none is skipped (`queries_skipped`). Metrics,
averaged over queries: recall@k (share of the query's relevant rows in its top k) and MRR
(1 / rank of the first relevant row in the top k, 0 when none: MRR@k).

**Self-retrieval mode** (no query file): `shadow.sample_size` rows having vectors in both
spaces, picked by `md5(id || seed)` so that reruns sample the same rows. Each row's query is
the middle of its text: the middle half of its words, at most 32 (rows under 8 words are not
sampled). Not the whole text: a model that maps equal texts to equal vectors (the `hash`
provider) would find every row; not the first words: docstrings and articles open with a
title or signature that makes the search trivial. Metrics: hit@k (the row is in its own
top k) and MRR.

Both modes also report overlap@k, the mean |top-k old ∩ top-k new| / k. Only ids, counts and
metrics leave this module: never a row's text, not even a query's.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.adapt import PyFormat

from ..config import ModelConfig, ProjectConfig, SpaceConfig
from ..db.destination import destination_of
from ..db.introspect import column_info, inspect_table, space_sql, table_ident
from ..db.registry import SpaceRecord, get_space, registry_exists, spaces_of_table
from ..errors import ConfigError, DatabaseError, SpaceConflictError
from ..providers import EmbeddingProvider, build_provider
from .activation import rollback_candidates
from .index import index_expression

DISTANCE_OPERATORS = {
    "vector_cosine_ops": "<=>",
    "vector_l2_ops": "<->",
    "vector_ip_ops": "<#>",
    "vector_l1_ops": "<+>",
}
SAMPLE_SEED = "shadow-validation-1"  # change it to draw another sample
MIN_QUERY_WORDS = 8
MAX_QUERY_WORDS = 32
# HNSW returns at most ef_search rows (default 40); k may ask for more.
MAX_EF_SEARCH = 1000
_CAST_RE = re.compile(r"::(halfvec|vector)\((\d+)\)")

Mode = Literal["labelled", "self_retrieval"]


@dataclass(frozen=True)
class LabelledQuery:
    line: int  # 1-based line in the file: how a query is named in errors
    text: str
    relevant: tuple[str, ...]


@dataclass(frozen=True)
class Baseline:
    """The space compared with, and why it was chosen."""

    config: SpaceConfig
    record: SpaceRecord
    reason: str  # "compare_to", "active" or "replaced"


@dataclass(frozen=True)
class SearchPlan:
    """How one space is searched: its column (or indexed expression) and distance operator."""

    space: SpaceConfig
    expression: sql.Composable
    operator: str
    cast: tuple[str, int] | None  # (type, dims) the query vector is cast to, as the index is

    def query(self, k: int) -> sql.Composed:
        param: sql.Composable = sql.Placeholder(format=PyFormat.BINARY)
        if self.cast is not None:
            param = sql.SQL("{}::{}({})").format(
                param, sql.SQL(self.cast[0]), sql.Literal(self.cast[1])
            )
        return sql.SQL(
            "SELECT {id} FROM {t} WHERE {v} IS NOT NULL ORDER BY {expr} {op} {param} LIMIT {k}"
        ).format(
            id=sql.Identifier(self.space.vector_key_column),
            t=destination_of(self.space).relation,
            v=sql.Identifier(self.space.target_column),
            expr=self.expression,
            op=sql.SQL(self.operator),
            param=param,
            k=sql.Literal(k),
        )


@dataclass(frozen=True)
class ShadowReport:
    mode: Mode
    old_space: str
    new_space: str
    old_model: str
    new_model: str
    baseline_reason: str
    k: int
    queries: int
    metrics: dict[str, tuple[float, float]]  # name -> (old, new); the primary metric first
    overlap_at_k: float
    max_regression: float
    old_vectors: int
    new_vectors: int
    seconds: float
    queries_skipped: int = 0
    relevant_unresolved: int = 0

    @property
    def primary(self) -> str:
        return next(iter(self.metrics))

    @property
    def regression(self) -> float:
        """How much worse the new space is on the primary metric (negative: better)."""
        old, new = self.metrics[self.primary]
        return old - new

    @property
    def passed(self) -> bool:
        return self.regression <= self.max_regression + 1e-12


# -- the query file ---------------------------------------------------------------------------


def load_queries(path: Path) -> list[LabelledQuery]:
    """Parse the JSON Lines query file; errors name the file and line, never the text."""
    if not path.is_file():
        raise ConfigError(
            f"shadow.queries_file {path} not found; fix the path (relative paths are under "
            "the project root) or remove queries_file to use self-retrieval on sampled rows"
        )
    queries: list[LabelledQuery] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            entry = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{where}: not a JSON object ({err.msg})") from None
        if not isinstance(entry, dict) or set(entry) != {"query", "relevant"}:
            raise ConfigError(
                f'{where}: each line must be {{"query": "...", "relevant": [...]}}, '
                "with exactly these two keys"
            )
        text, relevant = entry["query"], entry["relevant"]
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where}: `query` must be a non-empty string")
        if (
            not isinstance(relevant, list)
            or not relevant
            or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in relevant)
        ):
            raise ConfigError(f"{where}: `relevant` must be a non-empty list of keys (str or int)")
        queries.append(LabelledQuery(number, text, tuple(str(v) for v in relevant)))
    if not queries:
        raise ConfigError(f"shadow.queries_file {path} holds no queries")
    return queries


def resolve_relevant(
    conn: psycopg.Connection, space: SpaceConfig, values: set[str]
) -> dict[str, set[object]]:
    """Key value -> ids of the rows carrying it, for the values that match any row."""
    key_column = space.shadow.key_column or space.id_column
    info = inspect_table(conn, space)
    if column_info(conn, info.oid, key_column) is None:
        raise ConfigError(
            f"space {space.name!r}: shadow.key_column {key_column!r} is not a column of "
            f"{space.table}; name the column whose values the query file lists"
        )
    rows = conn.execute(
        sql.SQL("SELECT {key}::text, {id} FROM {t} WHERE {key}::text = ANY(%s)").format(
            key=sql.Identifier(key_column), id=sql.Identifier(space.id_column), t=table_ident(space)
        ),
        (sorted(values),),
    ).fetchall()
    resolved: dict[str, set[object]] = {}
    for value, row_id in rows:
        resolved.setdefault(value, set()).add(row_id)
    return resolved


# -- metrics ----------------------------------------------------------------------------------


def recall_at_k(ranked: Sequence[object], relevant: set[object], k: int) -> float:
    return len(set(ranked[:k]) & relevant) / len(relevant) if relevant else 0.0


def reciprocal_rank(ranked: Sequence[object], relevant: set[object], k: int) -> float:
    for rank, row_id in enumerate(ranked[:k], start=1):
        if row_id in relevant:
            return 1.0 / rank
    return 0.0


def hit_at_k(ranked: Sequence[object], relevant: set[object], k: int) -> float:
    return 1.0 if set(ranked[:k]) & relevant else 0.0


def overlap_at_k(a: Sequence[object], b: Sequence[object], k: int) -> float:
    return len(set(a[:k]) & set(b[:k])) / k


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else 0.0


def middle_slice(text: str, max_words: int = MAX_QUERY_WORDS) -> str:
    """The middle half of the text's words (at most `max_words`): a self-retrieval query."""
    words = text.split()
    take = min(max_words, max(1, len(words) // 2))
    start = (len(words) - take) // 2
    return " ".join(words[start : start + take])


# -- the spaces -------------------------------------------------------------------------------


def resolve_baseline(
    conn: psycopg.Connection, project: ProjectConfig, space: SpaceConfig
) -> Baseline:
    """The space to compare `space` with; raise naming the fix when there is none."""
    table = f"{space.schema_name}.{space.table_name}"
    compare_to = space.shadow.compare_to
    if compare_to == space.name:
        raise ConfigError(
            f"space {space.name!r}: shadow.compare_to names the space itself; name another "
            f"space of {table}, or remove it to compare with the table's active space"
        )
    records = spaces_of_table(conn, space.schema_name, space.table_name)
    if compare_to is not None:
        record = get_space(conn, compare_to) if registry_exists(conn) else None
        if record is None or record.status == "dropped":
            raise SpaceConflictError(
                f"space {space.name!r}: shadow.compare_to {compare_to!r} is not a registered "
                f"space{' (it was dropped)' if record else ''}; materialize "
                f"{compare_to}/target_column and {compare_to}/embeddings (or "
                f"{compare_to}/adoption) first"
            )
        if (record.table_schema, record.table_name) != (space.schema_name, space.table_name):
            raise ConfigError(
                f"space {space.name!r}: shadow.compare_to {compare_to!r} is a space of "
                f"{record.table_schema}.{record.table_name}, not {table}; retrieval can only be "
                "compared over the same rows"
            )
        reason = "compare_to"
    else:
        active = next((r for r in records if r.status == "active"), None)
        if active is not None and active.name != space.name:
            record, reason = active, "active"
        elif active is not None and (
            retired := rollback_candidates(conn, space.schema_name, space.table_name)
        ):
            record, reason = retired[0], "replaced"  # this space is active: vs what it replaced
        else:
            raise SpaceConflictError(
                f"space {space.name!r}: nothing to compare with: {table} has no "
                f"{'other space' if active else 'active space'} and shadow.compare_to is not "
                "set. Adopt or activate the space applications query today (e.g. materialize "
                "<name>/adoption of an `adopt: true` space), or set shadow.compare_to"
            )
    config = next((s for s in project.spaces if s.name == record.name), None)
    if config is None:
        raise ConfigError(
            f"space {space.name!r} is compared with {record.name!r} ({record.status} space of "
            f"{table}, column {record.column_name}, {record.identity.label()}), which is not in "
            f"the configuration: add a space named {record.name!r} to embedding_backfills.yaml "
            f"(table, text_column, target_column: {record.column_name}, the model that wrote "
            "it; `adopt: true` for a column this project did not write) so its queries are "
            "embedded with its own model, or set shadow.compare_to"
        )
    return Baseline(config, record, reason)


def search_plan(
    conn: psycopg.Connection, space: SpaceConfig, record: SpaceRecord | None
) -> SearchPlan:
    """Search the column the way its index is built: the registry's expression, else the
    one `<name>/hnsw_index` uses for this config, so the index (if any) serves the query."""
    info = inspect_table(conn, space)
    if info.target is None:
        raise DatabaseError(
            f"space {space.name!r}: {destination_of(space).label} does not exist; "
            f"materialize {space.name}/target_column and {space.name}/embeddings first"
        )
    text = record.index_expression if record is not None else None
    if not text:
        try:
            text = index_expression(space, info.target.typmod)[1]
        except DatabaseError:  # too many dimensions to index: search the column as it is
            text = ""
    column = sql.Identifier(space.target_column)
    cast = None
    if match := _CAST_RE.search(text):
        cast = (match.group(1), int(match.group(2)))  # whitelisted type name, integer dims
        expression: sql.Composable = sql.SQL("({}::{}({}))").format(
            column, sql.SQL(cast[0]), sql.Literal(cast[1])
        )
    else:
        expression = column
    return SearchPlan(space, expression, DISTANCE_OPERATORS[space.index.opclass], cast)


def _check_identity(space: SpaceConfig, provider: EmbeddingProvider, record: SpaceRecord) -> None:
    """Queries must be embedded by the model that wrote the column, or the spaces mix."""
    if provider.identity.key != record.model_key:
        raise SpaceConflictError(
            f"space {space.name!r}: the configuration declares {provider.identity.label()} but "
            f"column {record.column_name} was registered for {record.identity.label()}; "
            "queries embedded by another model would search a foreign space. Fix the space's "
            "`model` in embedding_backfills.yaml"
        )


def top_k(
    conn: psycopg.Connection, plan: SearchPlan, vectors: np.ndarray, k: int
) -> list[list[object]]:
    """Ids of the k nearest rows for each query vector, in order."""
    register_vector(conn)
    query = plan.query(k)
    with conn.transaction():
        conn.execute(
            "SELECT set_config('hnsw.ef_search', %s, true)", (str(min(MAX_EF_SEARCH, max(40, k))),)
        )
        return [
            [r[0] for r in conn.execute(query, (np.asarray(v, dtype=np.float32),))] for v in vectors
        ]


def _vector_count(conn: psycopg.Connection, space: SpaceConfig) -> int:
    row = conn.execute(
        sql.SQL("SELECT count({tv}) FROM {t} AS t {vjoin}").format(**space_sql(space))
    ).fetchone()
    return int(row[0]) if row else 0


def sample_rows(
    conn: psycopg.Connection, old: SpaceConfig, new: SpaceConfig, size: int
) -> list[tuple[object, str]]:
    """(id, text) of `size` rows with vectors in both spaces and enough words; the same rows
    on every run (ordered by a seeded hash of the id, not by random())."""
    old_at = destination_of(old)
    query = sql.SQL(
        "SELECT t.{id}, x.txt FROM {t} AS t CROSS JOIN LATERAL (SELECT {text} AS txt) AS x"
        " {vjoin} {old_join} WHERE {tv} IS NOT NULL AND {old_v} IS NOT NULL"
        " AND array_length(regexp_split_to_array(btrim(x.txt), '\\s+'), 1) >= %s"
        " ORDER BY md5(t.{id}::text || %s) LIMIT %s"
    ).format(
        old_join=sql.SQL("LEFT JOIN {} AS o ON o.{vk} = t.{id}").format(
            old_at.relation,
            vk=sql.Identifier(old.vector_key_column),
            id=sql.Identifier(old.id_column),
        )
        if old_at.kind == "table"
        else sql.SQL(""),
        old_v=old_at.column(old.target_column, "o" if old_at.kind == "table" else "t"),
        **space_sql(new),
    )
    rows = conn.execute(query, (MIN_QUERY_WORDS, SAMPLE_SEED, size)).fetchall()
    return [(r[0], str(r[1])) for r in rows]


# -- the evaluation ---------------------------------------------------------------------------

ProviderFactory = Callable[[ModelConfig], EmbeddingProvider]


def run_shadow_validation(
    conn: psycopg.Connection,
    project: ProjectConfig,
    space: SpaceConfig,
    provider_for: ProviderFactory = build_provider,
) -> ShadowReport:
    """Compare `space` ("new") with its baseline ("old"); `conn` must be autocommit."""
    started = time.monotonic()
    settings = space.shadow
    baseline = resolve_baseline(conn, project, space)
    old, new = baseline.config, space
    new_record = get_space(conn, new.name)
    providers = {"old": provider_for(old.model), "new": provider_for(new.model)}
    _check_identity(old, providers["old"], baseline.record)
    if new_record is not None:
        _check_identity(new, providers["new"], new_record)
    plans = {
        "old": search_plan(conn, old, baseline.record),
        "new": search_plan(conn, new, new_record),
    }
    k = settings.k

    path = settings.queries_path()
    skipped = unresolved = 0
    if path is not None:
        mode: Mode = "labelled"
        labelled = load_queries(path)
        resolved = resolve_relevant(conn, new, {v for q in labelled for v in q.relevant})
        texts, relevant = [], []
        for q in labelled:
            ids = set().union(*(resolved.get(v, set()) for v in q.relevant))
            unresolved += sum(1 for v in q.relevant if v not in resolved)
            if not ids:
                skipped += 1
                continue
            texts.append(q.text)
            relevant.append(ids)
        if not texts:
            raise ConfigError(
                f"space {space.name!r}: no query in {path} names a row of {space.table} (by "
                f"{settings.key_column or space.id_column}); check shadow.key_column and the "
                "file's `relevant` values"
            )
    else:
        mode = "self_retrieval"
        sample = sample_rows(conn, old, new, settings.sample_size)
        if not sample:
            raise DatabaseError(
                f"space {space.name!r}: no row of {space.table} has vectors in both "
                f"{old.name!r} and {new.name!r} (and at least {MIN_QUERY_WORDS} words); "
                f"materialize {new.name}/embeddings first"
            )
        texts = [middle_slice(text) for _, text in sample]
        relevant = [{row_id} for row_id, _ in sample]

    ranked = {
        side: top_k(conn, plans[side], providers[side].embed(texts).vectors, k)
        for side in ("old", "new")
    }

    def both(score: Callable[[Sequence[object], set[object], int], float]) -> tuple[float, float]:
        old_score, new_score = (
            _mean([score(r, rel, k) for r, rel in zip(ranked[side], relevant, strict=True)])
            for side in ("old", "new")
        )
        return old_score, new_score

    primary = "recall_at_k" if mode == "labelled" else "hit_at_k"
    metrics = {
        primary: both(recall_at_k if mode == "labelled" else hit_at_k),
        "mrr": both(reciprocal_rank),
    }
    overlap = _mean([overlap_at_k(a, b, k) for a, b in zip(*ranked.values(), strict=True)])
    return ShadowReport(
        mode=mode,
        old_space=old.name,
        new_space=new.name,
        old_model=providers["old"].identity.label(),
        new_model=providers["new"].identity.label(),
        baseline_reason=baseline.reason,
        k=k,
        queries=len(texts),
        metrics=metrics,
        overlap_at_k=overlap,
        max_regression=settings.max_regression,
        old_vectors=_vector_count(conn, old),
        new_vectors=_vector_count(conn, new),
        seconds=time.monotonic() - started,
        queries_skipped=skipped,
        relevant_unresolved=unresolved,
    )
