"""`embedding-backfills`: everything that is not a Dagster run."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .errors import EmbeddingBackfillError

app = typer.Typer(
    help="Re-embed PostgreSQL tables into new pgvector columns, gated by checks. "
    "Dagster runs live in the UI (`dagster dev`); this CLI covers the rest.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(width=max(Console().width, 110))


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
    if report.activation:
        act = report.activation
        console.print(
            f"registry: {report.space} is {act['status']} for {act['table']} "
            f"(column {act['column']}; retired: {act['retired_spaces']}). Applications query:\n"
            f"  SELECT * FROM embedding_backfills.active_column('{act['table']}');",
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


def main() -> None:  # pragma: no cover
    sys.exit(app())
