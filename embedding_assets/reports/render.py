"""Rich renderings of the reports for people (scripts use `--json`), and a rich `Progress`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import polars as pl
from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgressBar
from rich.table import Table

from .plan import PlanReport
from .smoke import SmokeReport
from .status import StatusReport, status_frames

_OK = "[green]ok[/]"
_STATE_STYLE = {"passed": "green", "failed": "bold red", "deferred": "yellow"}
_FAIL = "[bold red]FAIL[/]"


class RichProgress:
    """`reports.Progress` on a rich bar: one line, replaced at each step, then erased."""

    def __init__(self, bar: RichProgressBar) -> None:
        self._bar = bar
        self._task: TaskID | None = None

    def step(self, description: str, total: int | None = None) -> None:
        if self._task is not None:
            self._bar.remove_task(self._task)
        self._task = self._bar.add_task(description, total=total)

    def advance(self, amount: int = 1) -> None:
        if self._task is not None:
            self._bar.advance(self._task, amount)


@contextmanager
def progress_on(console: Console) -> Iterator[RichProgress]:
    """A transient progress line on `console`; silent when it is not a terminal."""
    with RichProgressBar(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        yield RichProgress(bar)


def _n(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _bytes(value: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else _OK if ok else _FAIL


def render_plan(report: PlanReport) -> RenderableType:
    checks = Table(title=f"plan {report.space}: {report.table}.{report.target_column}")
    checks.add_column("check")
    checks.add_column("verdict")
    checks.add_column("found", overflow="fold")
    for finding in report.findings:
        checks.add_row(finding.name, _verdict(finding.ok), finding.detail)

    endpoint = f"{report.endpoint.kind} endpoint {report.endpoint.host}"
    work = Table(title=f"estimate ({endpoint})")
    work.add_column("estimate")
    work.add_column("value", justify="right")
    work.add_column("how", overflow="fold")
    c = report.counts
    if c is not None:
        work.add_row("rows", _n(c.rows), "in the table")
        work.add_row("empty rows", _n(c.empty), "NULL or blank text: never embedded")
        work.add_row("rows already done", _n(c.done), "same text hash and model: skipped")
        work.add_row("rows to embed", _n(c.to_embed), "")
        work.add_row(
            "partitions", _n(c.partitions), f"{_n(c.partitions_to_run)} hold rows to embed"
        )
        work.add_row("batches", _n(report.batches), f"of {report.batch_size} rows")
    if report.tokens is not None:
        t = report.tokens
        how = f"{t.method}; {t.per_row:,.1f} per row, " + (
            f"counted on a random sample of {t.counted_rows:,} rows, extrapolated"
            if t.extrapolated
            else f"counted on all {t.counted_rows:,} rows"
        )
        label = "tokens" if t.exact_tokenizer else "tokens (approximate)"
        work.add_row(label, _n(t.total), how)
    if report.cost is not None:
        usd = "unknown" if report.cost.usd is None else f"{report.cost.usd:,.4f} USD"
        work.add_row("cost", usd, report.cost.basis)
    if report.time is not None:
        tm = report.time
        measured = (
            f"{tm.measured_rows_per_second:,.1f} rows/s measured on a sample of "
            f"{tm.sample_rows} rows ({tm.sample_seconds:.2f} s), one request at a time"
        )
        how = {
            "measured": measured,
            "requests in flight": f"{measured}, x{tm.in_flight} requests in flight"
            " (max_concurrent_requests) if the endpoint serves them",
            "tokens_per_minute": f"{measured}; capped by the endpoint's tokens_per_minute",
            "requests_per_minute": f"{measured}; capped by the endpoint's requests_per_minute",
        }[tm.bound]
        work.add_row(
            "embedding time",
            _duration(tm.seconds),
            f"{tm.rows_per_second:,.1f} rows/s: {how}; one run at a time",
        )
    if report.turnaround is not None:
        b = report.turnaround
        work.add_row(
            "Batch API",
            f"{_n(b.batches)} batches",
            f"at least: {_n(b.runs)} runs, each submitting its rows {b.inputs_per_batch:,} to a"
            f" batch, then waiting; each batch ends within its {b.completion_window_hours} h"
            " completion window, usually sooner. Wall time is the provider's turnaround"
            " times the waves of runs the endpoint's pool lets run at once, not the rate above",
        )
    if report.storage is not None:
        s = report.storage
        toast = "TOASTed (over ~2 kB a vector)" if s.toasted else "stored inline"
        where = "in the destination table" if s.destination == "table" else "in the table"
        work.add_row(
            "disk added",
            _bytes(s.added_bytes),
            f"{s.added_bytes_per_row:,} B/row {where}, {toast}",
        )
        if s.destination == "table":
            work.add_row("disk peak", _bytes(s.peak_bytes), "source table unchanged: no dead rows")
            work.add_row("WAL", _bytes(s.wal_bytes), "the INSERTs: new rows and their key")
            work.add_row(
                "WAL with vacuum",
                _bytes(s.wal_with_vacuum_bytes),
                "plus autovacuum setting hint bits after checkpoints: each new page again, whole",
            )
            work.add_row("dead tuples", "0", "nothing is updated: nothing for a vacuum to do")
        else:
            work.add_row(
                "disk peak", _bytes(s.peak_bytes), "before vacuum reclaims old row versions"
            )
            work.add_row("WAL", _bytes(s.wal_bytes), "the UPDATEs: new row versions and records")
            work.add_row(
                "WAL with vacuum",
                _bytes(s.wal_with_vacuum_bytes),
                "plus the vacuum pass after checkpoints: about every page as a full-page image",
            )
            work.add_row(
                "dead tuples",
                _n(s.dead_tuples),
                "one old row version per UPDATE, until autovacuum (or a VACUUM) reclaims it",
            )
        checkpoints = s.checkpoints_requested
        if checkpoints is not None:
            if checkpoints > 1:
                advice = (
                    f"~{checkpoints:,} checkpoints started by this WAL, each followed by pages"
                    " logged whole again; [yellow]raise max_wal_size to about the WAL with"
                    " vacuum for the backfill[/] (ALTER SYSTEM, then pg_reload_conf())"
                )
            elif checkpoints == 1:
                advice = "~1 checkpoint started by this WAL: about what a timed one costs"
            else:
                advice = "the backfill's WAL fits: no checkpoint started by WAL volume"
            work.add_row("max_wal_size", _bytes(s.max_wal_size_bytes), advice)
    if report.index is not None:
        ix = report.index
        work.add_row(
            "index build time",
            _duration(ix.seconds),
            f"HNSW over {_n(ix.rows)} vectors, from the measured curve (reports/index_estimate)",
        )
        work.add_row("index size", _bytes(ix.size_bytes), "")
        work.add_row(
            "maintenance_work_mem",
            _bytes(ix.memory_bytes),
            f"needed to build the graph in memory; configured {_bytes(ix.configured_bytes)}"
            + ("" if ix.fits else " [bold red]too small: the build spills to disk, much slower[/]"),
        )
    verdict = (
        "[bold green]ready:[/] nothing was written"
        if report.ok
        else "[bold red]not ready:[/] fix the failed checks (nothing was written)"
    )
    return Group(checks, work, verdict)


def render_smoke(report: SmokeReport) -> RenderableType:
    head = Table(title=f"smoke {report.space}: {report.model}")
    head.add_column("check")
    head.add_column("verdict")
    head.add_column("measured", overflow="fold")
    verdicts = report.verdicts
    head.add_row("endpoint", "-", f"{report.endpoint.kind} ({report.endpoint.host})")
    head.add_row(
        "dimension",
        _verdict(verdicts["dimension"]),
        f"returned {report.returned_dimension}, configured {report.configured_dimension}",
    )
    if report.batch is not None:
        b = report.batch
        cosine = "-" if b.min_cosine is None else f"{b.min_cosine:.6f}"
        head.add_row(
            "batch",
            _verdict(b.ok),
            f"{_n(b.returned)} of {b.size} vectors; sentinel batch-vs-single cosine min {cosine}",
        )
    if report.latency is not None:
        lat = report.latency
        head.add_row(
            "latency",
            "-",
            f"p50 {lat.p50_ms:.1f} ms, p95 {lat.p95_ms:.1f} ms, max {lat.max_ms:.1f} ms "
            f"over {lat.calls} calls",
        )
    if report.fingerprint is not None:
        f = report.fingerprint
        detail = f.status + ("" if f.min_cosine is None else f", min cosine {f.min_cosine:.6f}")
        if f.registered:
            detail += f"; registered {f.registered}, now {f.current}"
        head.add_row("fingerprint", _verdict(f.ok), detail)

    parts: list[RenderableType] = [head]
    if report.sentinels:
        sentinels = Table(title="sentinel texts (by number; texts are never printed)")
        for column in ("#", "chars", "dims", "finite", "norm", "unit norm", "verdict"):
            sentinels.add_column(column, justify="right")
        for s in report.sentinels:
            sentinels.add_row(
                str(s.index),
                str(s.chars),
                _n(s.dimension),
                "yes" if s.finite else "no",
                "-" if s.norm is None else f"{s.norm:.6f}",
                "-" if s.unit_norm is None else "yes" if s.unit_norm else "no",
                _verdict(s.ok),
            )
        parts.append(sentinels)
    parts.append(
        "[bold green]pass[/]" if report.passed else "[bold red]FAIL:[/] see the failed checks"
    )
    return Group(*parts)


def frame_table(frame: pl.DataFrame, title: str, *, right: Sequence[str] = ()) -> Table:
    """A polars DataFrame of display strings as a rich table (null cells shown as `-`)."""
    table = Table(title=title)
    for name in frame.columns:
        justify = "right" if name in right else "left"
        table.add_column(name, justify=justify, overflow="fold", no_wrap=name in right)
    for row in frame.iter_rows():
        table.add_row(*("-" if cell is None else str(cell) for cell in row))
    return table


def _thousands(column: str) -> pl.Expr:
    """An integer column as `1,234` (`?` when unknown), for people."""
    return (
        pl.col(column)
        .map_elements(lambda v: f"{v:,}", return_dtype=pl.String, skip_nulls=True)
        .fill_null("?")
    )


def render_status(report: StatusReport) -> RenderableType:
    frames = status_frames(report)
    counts = ("rows with text", "embedded", "missing", "stale")
    spaces = frames["spaces"].select(
        pl.col("space"),
        pl.col("registry"),
        pl.when(pl.col("adopted"))
        .then(pl.lit("adopted"))
        .otherwise(pl.format("{}/{}", "partitions_done", "partitions_total"))
        .alias("partitions"),
        _thousands("rows_with_text").alias("rows with text"),
        _thousands("embedded"),
        _thousands("missing"),
        pl.when(pl.col("adopted"))
        .then(pl.lit("n/a"))
        .otherwise(_thousands("stale"))
        .alias("stale"),
        # Sampled counts are estimates: say so next to them (status --exact scans).
        pl.when(pl.col("counted") == "sample")
        .then(pl.format("estimate: {}% sample", pl.col("sample_percent")))
        .otherwise(pl.col("counted").fill_null("-"))
        .alias("counted"),
    )
    # One line per index, the space's column named once; "none" when it has no index.
    where = frames["spaces"].select(
        "space",
        pl.format("{}.{}", "table", "target_column")
        .add(pl.when(pl.col("column_exists")).then(pl.lit("")).otherwise(pl.lit(" (absent)")))
        .alias("column"),
    )
    columns = (
        where.join(frames["indexes"], on="space", how="left", maintain_order="left")
        .with_columns(
            pl.col("index").fill_null("none"),
            pl.when(pl.col("valid").is_null())
            .then(pl.lit("-"))
            .when(pl.col("valid"))
            .then(pl.lit("yes"))
            .otherwise(pl.lit("[bold red]INVALID[/]"))
            .alias("valid"),
            first=pl.int_range(pl.len()).over("space") == 0,
        )
        .select(
            pl.when("first").then(pl.col("space")).otherwise(pl.lit("")).alias("space"),
            pl.when("first").then(pl.col("column")).otherwise(pl.lit("")).alias("column"),
            "index",
            "valid",
        )
    )
    style = pl.col("state").replace_strict(_STATE_STYLE, default=None)
    checks = frames["checks"].select(
        "space",
        "check",
        pl.when(style.is_null())
        .then(pl.col("state"))
        .otherwise(pl.format("[{}]{}[/]", style, pl.col("state")))
        .alias("state"),
        pl.col("severity").fill_null("-"),
        pl.col("evaluated_at")
        .dt.strftime("%Y-%m-%d %H:%M:%S")
        .fill_null("-")
        .alias("evaluated (UTC)"),
    )
    parts: list[RenderableType] = [
        frame_table(spaces, "vector spaces", right=("partitions", *counts)),
        frame_table(columns, "columns and indexes"),
    ]
    if checks.height:
        parts.append(frame_table(checks, "latest check evaluations"))
    return Group(*parts)
