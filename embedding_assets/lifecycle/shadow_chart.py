"""The shadow validation chart: one PNG, old vs new space per metric.

Drawn with matplotlib's Agg canvas on a `Figure` of its own (no pyplot), so no display, no
global backend switch and no state shared between threads or runs. Kept small (a few tens of
KB): the UI shows it inline from a base64 data URI in the materialization metadata.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .shadow import ShadowReport

OLD_COLOR = "#9aa5b1"
NEW_COLOR = "#2f6fde"
LABELS = {"recall_at_k": "recall@{k}", "hit_at_k": "hit@{k}", "mrr": "MRR@{k}"}


def metric_label(name: str, k: int) -> str:
    return LABELS.get(name, name).format(k=k)


def render_chart(report: ShadowReport) -> bytes:
    """Grouped bars: each metric, old space next to new space, values on top."""
    names = list(report.metrics)
    figure = Figure(figsize=(6.0, 3.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.38
    for offset, side, color, space in (
        (-width / 2, 0, OLD_COLOR, report.old_space),
        (width / 2, 1, NEW_COLOR, report.new_space),
    ):
        values = [report.metrics[n][side] for n in names]
        bars = axes.bar(
            [i + offset for i in range(len(names))],
            values,
            width,
            color=color,
            label=f"{'old' if side == 0 else 'new'}: {space}",
        )
        axes.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    axes.set_xticks(range(len(names)), [metric_label(n, report.k) for n in names])
    axes.set_ylim(0, 1.15)
    axes.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    axes.spines[["top", "right"]].set_visible(False)
    axes.legend(loc="upper left", fontsize=8, frameon=False, ncols=2)
    mode = "labelled queries" if report.mode == "labelled" else "sampled rows (self-retrieval)"
    axes.set_title(f"{report.queries} {mode}, k={report.k}", fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def chart_markdown(png: bytes) -> str:
    """The chart inline, for a markdown metadata entry the UI renders."""
    return f"![chart](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def write_chart(png: bytes, directory: Path, space_name: str) -> Path:
    """Write `<directory>/<space>.png` atomically (a reader never sees half a file)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{space_name}.png"
    partial = path.with_suffix(".png.partial")
    partial.write_bytes(png)
    partial.replace(path)
    return path
