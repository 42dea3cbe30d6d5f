"""Training curves as a PNG: loss and accuracy against epoch, learning rate against step."""

from __future__ import annotations

import io
from collections.abc import Sequence
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


def render_curves(records: Sequence[dict[str, Any]], title: str = "") -> bytes:
    """A CURVES_WIDTH_PX x CURVES_HEIGHT_PX PNG of the metrics records (metrics.jsonl lines).

    Panels with nothing to plot say so rather than disappear, so the image always has the same
    layout. Uses matplotlib's object API with the Agg canvas: no pyplot state, safe in threads.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(CURVES_WIDTH_PX / _DPI, CURVES_HEIGHT_PX / _DPI), dpi=_DPI)
    FigureCanvasAgg(figure)
    loss_ax, acc_ax, lr_ax = figure.subplots(1, 3)
    panels = [
        (loss_ax, "loss", "epoch", [("epoch", "train_loss", "train"), ("epoch", "val_loss", "validation")]),
        (acc_ax, "accuracy", "epoch", [("epoch", "train_accuracy", "train"), ("epoch", "val_accuracy", "validation")]),
        (lr_ax, "learning rate", "step", [("step", "lr", "lr")]),
    ]
    for ax, name, x_key, lines in panels:
        plotted = False
        for kind, y_key, label in lines:
            xs, ys = _series(records, kind, x_key, y_key)
            if not xs and kind == "step":
                xs, ys = _series(records, "epoch", "epoch", y_key)
                x_key = "epoch"
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
                plotted = True
        ax.set_title(name)
        ax.set_xlabel(x_key)
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
