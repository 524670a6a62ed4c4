"""`embedding-backfills`: everything that is not a Dagster run."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .errors import EmbeddingBackfillError

if TYPE_CHECKING:
    import polars as pl

app = typer.Typer(
    help="Re-embed PostgreSQL tables into new pgvector columns, gated by checks. "
    "Dagster runs live in the UI (`dagster dev`); this CLI covers the rest.",
    no_args_is_help=True,
    add_completion=False,
    # Docstrings wrap at 100 columns; markdown joins their lines into paragraphs.
    rich_markup_mode="markdown",
)
console = Console(width=max(Console().width, 110))
# Progress goes to stderr, so `--json` output on stdout stays parseable.
err_console = Console(stderr=True)
JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON (stable keys) instead of tables")
]


class StatusFormat(StrEnum):
    table = "table"
    csv = "csv"
    parquet = "parquet"
    json = "json"


class StatusTable(StrEnum):
    """The tables of `reports.status.status_frames`."""

    spaces = "spaces"
    partitions = "partitions"
    indexes = "indexes"
    checks = "checks"


def _fail(err: Exception) -> None:
    console.print(f"[bold red]error:[/] {err}", highlight=False)
    raise typer.Exit(2)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Model loading draws its own tqdm bars; the commands show one rich progress line.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@app.command()
def demo(
    reset: Annotated[bool, typer.Option(help="Drop and re-seed the demo table first")] = False,
) -> None:
    """Seed the demo table and re-embed it with all-MiniLM-L6-v2 through Dagster."""
    from .demo.run import run_demo

    try:
        with console.status("seeding, preparing the column, embedding every partition..."):
            report = run_demo(reset=reset)
    except EmbeddingBackfillError as err:
        _fail(err)
    table = Table(title=f"space {report.space}: one Dagster run per partition")
    for column in (
        "partition",
        "scanned",
        "embedded",
        "skipped",
        "empty",
        "truncated",
        "seconds",
        "rows/s",
    ):
        table.add_column(column, justify="right")
    for part in report.partitions:
        m = part.metadata
        table.add_row(
            part.key,
            *(
                f"{int(m.get(k, 0)):,}"
                for k in (
                    "rows_scanned",
                    "rows_embedded",
                    "rows_skipped",
                    "rows_empty",
                    "rows_truncated",
                )
            ),
            f"{float(m.get('seconds', 0)):.2f}",
            f"{float(m.get('rows_per_second', 0)):,.0f}",
        )
    if report.adoption:
        ad = report.adoption
        console.print(
            f"adopted {ad['space']} ({ad['model']}) as {ad['status']}: re-embedded "
            f"{ad['sample_size']} sampled rows, cosine min {float(ad['min_cosine']):.4f} "
            f"(no vector written)",
            highlight=False,
        )
    console.print(table)
    model = report.partitions[0].metadata.get("model", "?") if report.partitions else "?"
    console.print(
        f"database: {report.database}\nmodel: {model}\n"
        f"rows: {report.rows_in_table:,} ({report.rows_with_text:,} with text); "
        f"vectors: {report.vectors:,}, dimensions {report.dims}, model keys {report.model_keys}",
        highlight=False,
    )
    checks = ", ".join(
        f"{name} {'passed' if ok else 'FAILED'}" for name, ok in report.checks.items()
    )
    console.print(f"checks: {checks}", highlight=False)
    if report.index:
        idx = report.index
        console.print(
            f"index: {idx['index_name']} ({idx['expression']}), built in "
            f"{float(idx['build_seconds']):.2f}s, {int(idx['index_size_bytes']):,} bytes",
            highlight=False,
        )
    if report.shadow:
        console.print(report.shadow_summary(), highlight=False)
    if report.activation:
        act = report.activation
        console.print(
            f"registry: {report.space} is {act['status']} for {act['table']} "
            f"(column {act['column']}; retired: {act['retired_spaces']}). Applications query:\n"
            f"  SELECT * FROM embedding_backfills.active_column('{act['table']}') WHERE trusted;\n"
            "(trusted is false once the drift sensor finds the model swapped or the column "
            "altered: drift_status, drift_detail say which)",
            highlight=False,
        )
    if not report.complete or not report.activation:
        console.print("[bold red]not activated:[/] the space did not pass its checks; see the UI")
        raise typer.Exit(1)
    console.print(
        "[bold green]done:[/] every row with text has a checked vector from one model; the "
        "space is indexed and active. `dagster dev` shows the runs, checks and metadata."
    )


@app.command()
def rollback(
    table: Annotated[str, typer.Argument(help="schema.table whose previous space to restore")],
    to: Annotated[str | None, typer.Option(help="A specific retired space")] = None,
) -> None:
    """Make the previous space of TABLE active again, if its column, index and checks hold."""
    from .config import load_config
    from .db.connection import connection
    from .lifecycle.activation import rollback as do_rollback

    try:
        with connection(autocommit=True) as conn:
            switch = do_rollback(conn, load_config(), table, to)
    except EmbeddingBackfillError as err:
        _fail(err)
    console.print(
        f"[bold green]{switch.activated}[/] is active for {table}; retired: "
        f"{', '.join(switch.retired) or 'none'}"
    )


retention = typer.Typer(help="Back up and drop retired spaces (never automatic).")
app.add_typer(retention, name="retention")


@retention.command("backup")
def retention_backup(space: Annotated[str, typer.Argument(help="Space name")]) -> None:
    """Write SPACE's (id, vector) pairs to a binary COPY file and record it in the registry."""
    from .config import load_config
    from .db.connection import connection
    from .lifecycle.retention import backup_space

    try:
        with connection(autocommit=True) as conn:
            backup = backup_space(conn, load_config().space(space))
    except EmbeddingBackfillError as err:
        _fail(err)
    console.print(f"backed up {backup.rows:,} vectors ({backup.bytes:,} bytes) to {backup.path}")


@retention.command("drop")
def retention_drop(space: Annotated[str, typer.Argument(help="A retired space")]) -> None:
    """Drop a retired SPACE's index and columns, after its delay and a backup."""
    from .config import load_config
    from .db.connection import connection
    from .lifecycle.retention import drop_retired_space

    try:
        with connection(autocommit=True) as conn:
            dropped = drop_retired_space(conn, load_config().space(space))
    except EmbeddingBackfillError as err:
        _fail(err)
    console.print(f"dropped {', '.join(dropped)}")


changelog = typer.Typer(
    help="The trigger-based change log: the drift sensor's fast path for large tables."
)
app.add_typer(changelog, name="changelog")


def _changelog_action(space: str, action: str, json_output: bool) -> None:
    from dataclasses import asdict

    from .config import load_config
    from .db.connection import connection
    from .drift import changelog as log

    do = {
        "install": log.install_changelog,
        "uninstall": log.uninstall_changelog,
        "status": log.changelog_status,
    }[action]
    try:
        with connection(autocommit=True) as conn:
            state = do(conn, load_config().space(space))
    except EmbeddingBackfillError as err:
        _fail(err)
    if json_output:
        _emit_json(asdict(state))
        return
    watched = ", ".join(state.columns) or "-"
    console.print(
        f"change log of {state.space}: {'installed' if state.installed else 'not installed'}"
        f" (text columns watched: {watched}); {state.pending:,} changes pending",
        highlight=False,
    )


@changelog.command("install")
def changelog_install(
    space: Annotated[str, typer.Argument(help="Space name")], json_output: JsonFlag = False
) -> None:
    """Put change-log triggers on SPACE's table: inserts and text edits are logged.

    Two row-level triggers (AFTER INSERT; AFTER UPDATE OF the text columns, when a value
    really changed) write the row id to `embedding_backfills.change_log`; the
    `<space>__drift` sensor turns the entries into partition runs within minutes.
    Idempotent.
    """
    _changelog_action(space, "install", json_output)


@changelog.command("uninstall")
def changelog_uninstall(
    space: Annotated[str, typer.Argument(help="Space name")], json_output: JsonFlag = False
) -> None:
    """Drop SPACE's change-log triggers and its pending entries (the content sweep remains)."""
    _changelog_action(space, "uninstall", json_output)


@changelog.command("status")
def changelog_show(
    space: Annotated[str, typer.Argument(help="Space name")], json_output: JsonFlag = False
) -> None:
    """Whether SPACE's change log is installed, which columns it watches, what is pending."""
    _changelog_action(space, "status", json_output)


def _emit_json(data: dict[str, object]) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


def _show(report: Any, render: Callable[[Any], Any], json_output: bool, ok: bool = True) -> None:
    """A report as JSON (stdout, for scripts) or rendered; exit 1 when it failed a verdict."""
    if json_output:
        _emit_json(report.as_dict())
    else:
        console.print(render(report))
    if not ok:
        raise typer.Exit(1)


@app.command()
def plan(
    space: Annotated[str, typer.Argument(help="Space name from the configuration")],
    sample: Annotated[
        int,
        typer.Option(
            min=0,
            help="Rows embedded to time the model; a hosted endpoint receives (and bills) "
            "them. 0 skips the timing",
        ),
    ] = 64,
    token_sample: Annotated[
        int,
        typer.Option(min=1, help="Rows whose tokens are counted; larger tables extrapolate"),
    ] = 2000,
    json_output: JsonFlag = False,
) -> None:
    """Dry run: validate SPACE against the live database and estimate its backfill.

    Checks pgvector, the table, key, text and target column, indexes, the registry and the
    model's fingerprint; counts rows, empty rows, rows already done, partitions and
    batches; estimates tokens, cost, embedding time (from a measured sample) and disk/WAL.
    Writes nothing: every query runs in a read-only transaction. Exits 1 when a check fails.
    """
    from .config import load_config
    from .reports.plan import plan_space
    from .reports.render import progress_on, render_plan

    try:
        with progress_on(err_console) as progress:
            report = plan_space(
                load_config().space(space),
                sample_size=sample,
                token_sample=token_sample,
                progress=progress,
            )
    except EmbeddingBackfillError as err:
        _fail(err)
    _show(report, render_plan, json_output, ok=report.ok)


@app.command()
def smoke(
    space: Annotated[str, typer.Argument(help="Space name from the configuration")],
    calls: Annotated[
        int, typer.Option(min=1, help="Single-input calls timed for the latency percentiles")
    ] = 10,
    json_output: JsonFlag = False,
) -> None:
    """Measure SPACE's model endpoint with fixed sentinel texts (never a row).

    Reports the returned dimension against the configured one, each sentinel vector
    (finite, non-zero, unit norm), a batch call's count and order, p50/p95 latency, whether
    the endpoint is local, on a private network or in a public cloud, and whether the model
    still matches the registered fingerprint. Prints numbers and verdicts only. Exits 1
    when a verdict fails, 2 when the endpoint cannot be used at all.
    """
    from .config import load_config
    from .reports.render import progress_on, render_smoke
    from .reports.smoke import smoke_space

    try:
        with progress_on(err_console) as progress:
            report = smoke_space(load_config().space(space), calls=calls, progress=progress)
    except EmbeddingBackfillError as err:
        _fail(err)
    _show(report, render_smoke, json_output, ok=report.passed)


@app.command()
def status(
    space: Annotated[
        str | None, typer.Argument(help="One space; default: every configured space")
    ] = None,
    output_format: Annotated[
        StatusFormat,
        typer.Option("--format", help="table: for people; csv, parquet, json: one table's rows"),
    ] = StatusFormat.table,
    table: Annotated[
        StatusTable,
        typer.Option(
            "--table", help="Which table --format csv|parquet|json exports (one row per ...)"
        ),
    ] = StatusTable.spaces,
    output: Annotated[
        Path | None,
        typer.Option("--output", help="Write the export here (required for parquet)"),
    ] = None,
    exact: Annotated[
        bool,
        typer.Option(
            "--exact",
            help="Count every row even above 200,000 rows (a full scan: minutes at 10M rows);"
            " default: a sample, scaled",
        ),
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Where each space stands, from the registry, the table and Dagster.

    Per space: registry state (building, active, retired, dropped or unregistered), id-range
    partitions materialized out of those created, rows with text, embedded, missing and stale
    (every row counted up to 200,000 rows; above, a sample of ~50,000 rows scaled to the
    table, unless --exact), the latest evaluation of each column check, and the indexes on
    the target column. Reads only.

    `--format csv|parquet|json` exports one table (`--table`: spaces, partitions, indexes or
    checks) to stdout or `--output`; `--json` prints the whole report as nested JSON.
    """
    if output_format is StatusFormat.parquet and output is None:
        raise typer.BadParameter("--format parquet writes a file: give --output PATH")
    from .config import load_config
    from .instance import project_instance
    from .reports.render import progress_on, render_status
    from .reports.status import status_report

    try:
        config = load_config()
        spaces = [config.space(space)] if space else list(config.spaces)
        instance = project_instance()
        try:
            with progress_on(err_console) as progress:
                report = status_report(spaces, instance, progress=progress, exact=exact)
        finally:
            instance.dispose()
    except EmbeddingBackfillError as err:
        _fail(err)
    if json_output or output_format is StatusFormat.table:
        _show(report, render_status, json_output)
        return
    from .reports.status import status_frames

    export_frame(status_frames(report)[table.value], output_format.value, output)


def export_frame(frame: pl.DataFrame, output_format: str, output: Path | None) -> None:
    """Write `frame` as csv, parquet or json (records) to `output`, or stdout (not parquet)."""
    if output_format == "parquet":
        assert output is not None
        frame.write_parquet(output)
        return
    if output_format == "csv":
        text = frame.write_csv()
    else:  # records; datetimes as ISO 8601
        text = json.dumps(frame.to_dicts(), indent=2, default=lambda v: v.isoformat()) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)


def main() -> None:  # pragma: no cover
    sys.exit(app())
