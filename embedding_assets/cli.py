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
    console.print(table)
    model = report.partitions[0].metadata.get("model", "?") if report.partitions else "?"
    console.print(
        f"database: {report.database}\nmodel: {model}\n"
        f"rows: {report.rows_in_table:,} ({report.rows_with_text:,} with text); "
        f"vectors: {report.vectors:,}, dimensions {report.dims}, model keys {report.model_keys}",
        highlight=False,
    )
    if not report.complete:
        console.print("[bold red]incomplete:[/] some rows with text have no vector")
        raise typer.Exit(1)
    console.print(
        "[bold green]complete:[/] every row with text has a vector from one model. "
        "Open the UI with `dagster dev` to see the runs."
    )


def main() -> None:  # pragma: no cover
    sys.exit(app())
