"""Training curves as a PNG: loss and accuracy against epoch, learning rate against step (for a federated
run: loss and accuracy against round, with the worst site, and each round's time)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CURVES_WIDTH_PX = 1500
CURVES_HEIGHT_PX = 450
_DPI = 100


def _series(records: Sequence[dict[str, Any]], kind: str, x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for record in records:
        x, y = record.get(x_key), record.get(y_key)
        if record.get("kind") == kind and isinstance(x, int | float) and isinstance(y, int | float):
            xs.append(float(x))
            ys.append(float(y))
    return xs, ys


@dataclass(frozen=True)
class Panel:
    """One plot of the PNG: its title, the x axis (record key and label) and its lines (kind, y key, label)."""

    title: str
    x_key: str
    x_label: str
    lines: list[tuple[str, str, str]]


def curve_panels(records: Sequence[dict[str, Any]]) -> list[Panel]:
    """The three panels for these records: loss and accuracy by epoch, learning rate by step.

    A federated run records one "epoch" record per round: its panels put rounds on the x axis, add the
    worst site's accuracy, and show each round's time instead of a learning rate (each site keeps its own).
    """
    if any(record.get("kind") == "epoch" and "round" in record for record in records):
        return [
            Panel("loss", "epoch", "round", [("epoch", "train_loss", "train"), ("epoch", "val_loss", "validation")]),
            Panel(
                "accuracy",
                "epoch",
                "round",
                [("epoch", "val_accuracy", "validation"), ("epoch", "worst_site_val_accuracy", "worst site")],
            ),
            Panel("round time (s)", "epoch", "round", [("epoch", "round_seconds", "round")]),
        ]
    return [
        Panel("loss", "epoch", "epoch", [("epoch", "train_loss", "train"), ("epoch", "val_loss", "validation")]),
        Panel(
            "accuracy",
            "epoch",
            "epoch",
            [("epoch", "train_accuracy", "train"), ("epoch", "val_accuracy", "validation")],
        ),
        Panel("learning rate", "step", "step", [("step", "lr", "lr")]),
    ]


def render_curves(records: Sequence[dict[str, Any]], title: str = "") -> bytes:
    """A CURVES_WIDTH_PX x CURVES_HEIGHT_PX PNG of the metrics records (metrics.jsonl lines), as `curve_panels`.

    Panels with nothing to plot say so rather than disappear, so the image always has the same
    layout. Uses matplotlib's object API with the Agg canvas: no pyplot state, safe in threads.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(CURVES_WIDTH_PX / _DPI, CURVES_HEIGHT_PX / _DPI), dpi=_DPI)
    FigureCanvasAgg(figure)
    for ax, panel in zip(figure.subplots(1, 3), curve_panels(records), strict=True):
        plotted = False
        x_key, x_label = panel.x_key, panel.x_label
        for kind, y_key, label in panel.lines:
            xs, ys = _series(records, kind, x_key, y_key)
            if not xs and kind == "step":
                xs, ys = _series(records, "epoch", "epoch", y_key)
                x_key = x_label = "epoch"
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
                plotted = True
        ax.set_title(panel.title)
        ax.set_xlabel(x_label)
        ax.grid(True, alpha=0.3)
        if plotted:
            ax.legend(loc="best", fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes, color="gray")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()
