"""The drift sensors of a space, as plain functions: state in, run requests and verdicts out.

Two sensors per space (thin wrappers in `embedding_assets.defs.sensors`):

- `<name>__drift` (every `drift.interval_seconds`, cheap, bounded): the configuration and
  column still match the registry, the model's fingerprint is unchanged, new key ranges and
  rows past the highest id seen, and the change log when installed. A failed verdict is
  recorded as a failed asset check on `<name>/target_column` (the `embedding_alerts`
  sensor turns it into one notification) and stops all runs until it passes again. New
  rows and logged changes become one run per affected partition.
- `<name>__content_drift` (a sweep starts on `drift.content_cron`): hashes the table in
  windows of `drift.sweep_rows_per_tick` rows per tick and requests runs for exactly the
  partitions holding missing or stale vectors.

Run keys name the partition and the drift (`rows:<partition>:<digest of the highest key>:<change>`,
`content:<partition>:<digest of the drifting ids>`): Dagster never launches the same key
twice for a sensor, so the same drift found again (a repeated tick, the next sweep before
the run has fixed it) does not launch a second run. Drift runs skip the whole-column checks
(a 10M-row scan per upkeep run would cost more than the upkeep); the sweep re-verifies.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg

from ..checks.column import CheckVerdict
from ..config import SpaceConfig
from ..db.introspect import inspect_table
from ..db.registry import SpaceRecord, get_space, registry_exists
from ..drift.changelog import exact_ranges, forget_changes, pending_changes
from ..drift.content import sweep_window
from ..drift.identity import identity_verdicts
from ..drift.rows import find_new_rows
from ..pipeline.partitions import recorded_ranges
from ..providers import EmbeddingProvider

MAX_CHANGES_PER_TICK = 10_000


@dataclass(frozen=True)
class PartitionRun:
    partition_key: str
    run_key: str
    reason: str


@dataclass
class DriftTick:
    """One evaluation's outcome: the cursor to store and what to ask Dagster for."""

    cursor: str
    runs: list[PartitionRun] = field(default_factory=list)
    partitions_to_add: list[str] = field(default_factory=list)
    verdicts: list[CheckVerdict] = field(default_factory=list)  # changed since the last tick
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{len(self.runs)} partition runs requested"] if self.runs else []
        if self.partitions_to_add:
            parts.append(f"{len(self.partitions_to_add)} partitions added")
        parts.extend(f"{v.name} {'passed' if v.passed else 'FAILED'}" for v in self.verdicts)
        parts.extend(self.notes)
        return "; ".join(parts) or "no drift"


def _registered(conn: psycopg.Connection, space: SpaceConfig) -> SpaceRecord | None:
    record = get_space(conn, space.name) if registry_exists(conn) else None
    return None if record is None or record.status == "dropped" else record


def _not_registered(space: SpaceConfig, cursor: str) -> DriftTick:
    return DriftTick(
        cursor, notes=[f"space not registered yet: materialize {space.name}/target_column"]
    )


# --- the cheap sensor -----------------------------------------------------------------------


@dataclass
class WatchState:
    max_key: str | None = None  # highest key seen, as text; None before the first tick
    handled_changes: list[tuple[int, int]] = field(default_factory=list)
    verdicts: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def parse(cls, cursor: str | None) -> WatchState:
        try:
            data = json.loads(cursor or "{}")
            seen = data.get("max_key", data.get("max_id"))  # max_id: cursors of integer layouts
            return cls(
                None if seen is None else str(seen),
                [(int(lo), int(hi)) for lo, hi in data.get("handled_changes", [])],
                {str(k): bool(v) for k, v in data.get("verdicts", {}).items()},
            )
        except (ValueError, TypeError, AttributeError):
            return cls()  # an unreadable cursor: start over (at worst, a run is requested twice)

    def dump(self) -> str:
        return json.dumps(
            {
                "max_key": self.max_key,
                "handled_changes": self.handled_changes,
                "verdicts": self.verdicts,
            }
        )


def watch_tick(
    conn: psycopg.Connection,
    space: SpaceConfig,
    provider: EmbeddingProvider,
    known_partitions: set[str],
    cursor: str | None,
) -> DriftTick:
    """Identity verdicts first; only when they pass, new rows and logged changes."""
    state = WatchState.parse(cursor)
    record = _registered(conn, space)
    if record is None:
        return _not_registered(space, state.dump())
    verdicts = identity_verdicts(conn, space, provider, record)
    tick = DriftTick("", verdicts=[v for v in verdicts if state.verdicts.get(v.name) != v.passed])
    state.verdicts = {v.name: v.passed for v in verdicts}
    failing = [v.name for v in verdicts if not v.passed]
    if failing:
        tick.notes.append(f"no runs while {', '.join(failing)} fails")
        tick.cursor = state.dump()
        return tick

    # The cursor naming these ranges was stored with the runs they caused: forget them now.
    key = inspect_table(conn, space).key
    forget_changes(conn, space, state.handled_changes)
    # The layout first: a change of a row in a range laid out this tick maps to that range.
    new = find_new_rows(conn, space, key, known_partitions, state.max_key)
    changes = pending_changes(conn, space, key, MAX_CHANGES_PER_TICK)
    reasons: dict[str, list[str]] = {}
    for partition in new.unknown:
        reasons.setdefault(partition, []).append("new key range")
    for partition in new.grown:
        reasons.setdefault(partition, []).append("new rows")
    change_ids: dict[str, list[int]] = {}
    gone: list[int] = []  # changes of rows deleted since: nothing to do
    for change_id, partition in changes:
        if partition is None:
            gone.append(change_id)
        else:
            change_ids.setdefault(partition, []).append(change_id)
    for partition in change_ids:
        reasons.setdefault(partition, []).append("changed rows")

    wanted = sorted(reasons)
    cap = space.drift.max_runs_per_tick
    chosen, deferred = wanted[:cap], wanted[cap:]
    seen = hashlib.md5((new.max_key or "").encode()).hexdigest()[:12]  # keys may be long text
    tick.runs = [
        PartitionRun(
            partition,
            f"rows:{partition}:{seen}:{max(change_ids.get(partition, [0]))}",
            ", ".join(reasons[partition]),
        )
        for partition in chosen
    ]
    tick.partitions_to_add = [p for p in new.unknown if p in chosen]
    state.handled_changes = exact_ranges(
        [c for partition in chosen for c in change_ids.get(partition, [])] + gone
    )
    # A partition with new rows that did not get its run: look above the same key next tick.
    if state.max_key is None or not any(p in new.grown for p in deferred):
        state.max_key = new.max_key
    if deferred:
        tick.notes.append(f"{len(deferred)} partitions wait for the next tick (max_runs_per_tick)")
    tick.cursor = state.dump()
    return tick


# --- the content sweep ----------------------------------------------------------------------


@dataclass
class SweepState:
    last_start: float | None = None  # when the latest sweep started (UTC timestamp)
    next_seq: int | None = None  # the partition the sweep in progress resumes at; None: none
    rows_scanned: int = 0
    runs_requested: int = 0

    @classmethod
    def parse(cls, cursor: str | None) -> SweepState:
        try:
            data = json.loads(cursor or "{}")
            return cls(
                data.get("last_start"),
                data.get("next_seq"),
                int(data.get("rows_scanned", 0)),
                int(data.get("runs_requested", 0)),
            )
        except (ValueError, TypeError, AttributeError):
            return cls()

    def dump(self) -> str:
        return json.dumps(self.__dict__)


def next_sweep_at(last_start: float, cron: str) -> float:
    """The first cron time after the latest sweep started (UTC)."""
    from dagster._utils.schedules import cron_string_iterator

    return next(cron_string_iterator(last_start + 1, cron, "UTC")).timestamp()


def sweep_tick(
    conn: psycopg.Connection,
    space: SpaceConfig,
    provider: EmbeddingProvider,
    materialized_partitions: set[str],
    cursor: str | None,
    now: float,
) -> DriftTick:
    """Scan the next window of a sweep (starting one when the cron says so)."""
    state = SweepState.parse(cursor)
    record = _registered(conn, space)
    if record is None:
        return _not_registered(space, state.dump())
    if record.model_key != provider.identity.key:
        return DriftTick(
            state.dump(), notes=["skipped: the configuration no longer matches the registry"]
        )
    if state.next_seq is None:
        if state.last_start is not None:
            due = next_sweep_at(state.last_start, space.drift.content_cron)
            if due > now:
                when = datetime.fromtimestamp(due, UTC).isoformat(timespec="minutes")
                return DriftTick(state.dump(), notes=[f"next content sweep at {when}"])
        state = SweepState(last_start=now, next_seq=0)

    window = sweep_window(
        conn,
        space,
        inspect_table(conn, space).key,
        provider.identity.key,
        recorded_ranges(conn, space),
        state.next_seq,
        space.drift.sweep_rows_per_tick,
    )
    # Partitions never materialized belong to a backfill that has not reached them yet.
    eligible = [d for d in window.drift if d.key in materialized_partitions]
    cap = space.drift.max_runs_per_tick
    chosen = eligible[:cap]
    seqs = {r.partition_key: r.seq for r in recorded_ranges(conn, space)}
    state.next_seq = seqs[eligible[cap].key] if len(eligible) > cap else window.next_seq
    state.rows_scanned += window.rows_scanned
    state.runs_requested += len(chosen)
    tick = DriftTick(
        state.dump(),
        runs=[
            PartitionRun(
                d.key,
                f"content:{d.key}:{d.signature}",
                f"{d.rows_missing} missing, {d.rows_stale} stale, "
                f"{d.vectors_without_text} without text",
            )
            for d in chosen
        ],
    )
    if len(window.drift) > len(eligible):
        tick.notes.append(
            f"{len(window.drift) - len(eligible)} partitions with drift not materialized yet "
            "(left to their backfill)"
        )
    tick.notes.append(
        f"sweep at partition {state.next_seq}"
        if state.next_seq is not None
        else f"sweep complete: {state.rows_scanned:,} rows, {state.runs_requested} runs"
    )
    return tick
