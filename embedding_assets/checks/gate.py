"""The gate's decision: may the index and the activation expose the column now?

Plain logic over the check evaluations recorded since the latest write; the Dagster side
(`embedding_assets.defs.check_history`) fetches them. Runs of one backfill finish out of
their start order, so "latest" means newest by evaluation time, never the execution that
was planned last. The rules, per gating check:

- only evaluations recorded after the latest write to the column count;
- `deferred` evaluations (a run that left partitions unmaterialized) are not verdicts;
- the newest real verdict decides: a pass that a later failure contradicts never opens;
- the pass must come from a scan that started after the latest write: a scan that was
  already running when another run wrote may not have seen those rows.

And for the whole space: no partition may be unmaterialized right now (partitions added for
new rows after the checks passed keep the gate closed).

A gate that is closed only because some checks have no verdict yet, while a run that will
evaluate them is still going, is `awaiting` them: in a UI backfill the index run starts as
soon as the last partition is written, while that run still scans the column. The caller
waits for that run rather than failing the backfill.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Evaluation:
    """One recorded check evaluation, as the gate needs it (never row text)."""

    check_name: str
    passed: bool
    deferred: bool
    evaluated_at: float  # when it was recorded (UTC timestamp)
    storage_id: int  # event log id: the tie-breaker for equal timestamps
    description: str = ""
    severity: str = "error"  # error | warn
    # when its scan started; None for evaluations recorded before the field existed
    scan_started_at: float | None = None
    run_id: str = ""

    @property
    def observed_at(self) -> float:
        """The moment the data it judged was read (the scan's start when known)."""
        return self.scan_started_at if self.scan_started_at is not None else self.evaluated_at


@dataclass(frozen=True)
class GateDecision:
    problems: list[str] = field(default_factory=list)
    deciding: dict[str, Evaluation] = field(default_factory=dict)
    # checks with no verdict since the latest write (and nothing else wrong with them)
    unevaluated: list[str] = field(default_factory=list)
    pending_partitions: int = 0

    @property
    def open(self) -> bool:
        return not self.problems

    @property
    def only_unevaluated(self) -> bool:
        """Closed only for want of verdicts: no failure, no stale pass, no partition left."""
        verdicts = len(self.deciding) + len(self.unevaluated)
        return (
            bool(self.unevaluated)
            and not self.pending_partitions
            and (len(self.problems) == len(self.unevaluated) and verdicts > 0)
        )

    @property
    def checks_evaluated_at(self) -> float | None:
        """When the oldest of the deciding passes was recorded: the validation time."""
        return min((e.evaluated_at for e in self.deciding.values()), default=None)


def newest(evaluations: Sequence[Evaluation]) -> Evaluation | None:
    return max(evaluations, key=lambda e: (e.evaluated_at, e.storage_id), default=None)


def decide(
    check_names: Sequence[str],
    evaluations: Sequence[Evaluation],
    *,
    last_write_at: float,
    pending_partitions: Sequence[str],
) -> GateDecision:
    """Apply the rules above; `evaluations` are those recorded after the latest write."""
    problems: list[str] = []
    deciding: dict[str, Evaluation] = {}
    unevaluated: list[str] = []
    if pending_partitions:
        problems.append(
            f"{len(pending_partitions)} partitions are not materialized "
            f"(first: {sorted(pending_partitions)[0]})"
        )
    for name in check_names:
        own = [e for e in evaluations if e.check_name == name]
        verdict = newest([e for e in own if not e.deferred])
        if verdict is None:
            why = "only deferred evaluations" if own else "no evaluation"
            problems.append(f"{name}: {why} since the latest write to the column")
            unevaluated.append(name)
        elif not verdict.passed:
            problems.append(f"{name}: failed ({verdict.description or 'see the check'})")
        elif verdict.observed_at < last_write_at:
            problems.append(
                f"{name}: its passing scan started before the latest write to the column"
            )
        else:
            deciding[name] = verdict
    return GateDecision(problems, deciding, unevaluated, len(pending_partitions))
