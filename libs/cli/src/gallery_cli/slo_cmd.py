"""`gallery slo NAME`: a model's SLOs on the monitor (latency, errors, drift and online quality), shown, and
changed field by field (`PUT /api/v1/slos/{model}`: what is not given keeps its value)."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer

from .console import fail, print_fields
from .service_client import MonitorClient

# the quality thresholds `--off` switches off (null on the monitor), by their option's name
THRESHOLDS = {
    "min-online-accuracy": "min_online_accuracy",
    "max-accuracy-drop": "max_accuracy_drop",
    "max-online-rmse": "max_online_rmse",
    "max-rmse-ratio": "max_rmse_ratio",
}
SHOWN = (
    ("p99_ms", "p99 latency a version may have, ms"),
    ("error_rate", "share of requests that may fail"),
    ("window_s", "window p99, errors and drift are judged over, s"),
    ("drift_psi", "largest feature PSI before drift"),
    ("drift_min_samples", "samples a drift window needs"),
    ("min_online_accuracy", "floor of online accuracy (feedback labels)"),
    ("max_accuracy_drop", "how far online accuracy may fall below its test accuracy"),
    ("max_online_rmse", "ceiling of a regressor's online rmse"),
    ("max_rmse_ratio", "online rmse at most this many times its test rmse"),
    ("quality_min_rows", "rows with feedback before quality is judged"),
    ("quality_window_s", "window online quality is judged over, s"),
)


def _shown(value: Any) -> str:
    return "off" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def slo(
    model: Annotated[str, typer.Argument(help="model name")],
    p99_ms: Annotated[float | None, typer.Option("--p99-ms", min=0.001)] = None,
    error_rate: Annotated[float | None, typer.Option("--error-rate", min=0, max=1)] = None,
    window: Annotated[float | None, typer.Option("--window", min=1, help="seconds (p99, errors, drift)")] = None,
    drift_psi: Annotated[float | None, typer.Option("--drift-psi", min=0.001)] = None,
    min_online_accuracy: Annotated[
        float | None, typer.Option("--min-online-accuracy", min=0, max=1, help="0.9: at least 90 %")
    ] = None,
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option(
            "--max-accuracy-drop",
            min=0,
            max=1,
            help="0.05: 5 points below the test accuracy of what answered (the gate's; an optimized variant's: "
            "the optimizer's)",
        ),
    ] = None,
    max_online_rmse: Annotated[float | None, typer.Option("--max-online-rmse", min=0.0)] = None,
    max_rmse_ratio: Annotated[float | None, typer.Option("--max-rmse-ratio", min=1, help="1.2: 20 % worse")] = None,
    quality_min_rows: Annotated[int | None, typer.Option("--quality-min-rows", min=1)] = None,
    quality_window: Annotated[float | None, typer.Option("--quality-window", min=1, help="seconds")] = None,
    off: Annotated[
        list[str] | None,
        typer.Option("--off", help=f"switch a quality threshold off: {', '.join(THRESHOLDS)} (repeatable)"),
    ] = None,
) -> None:
    """Show a model's SLOs; with options, change those (an admin token in its project). A breach rolls the
    version back (model.degraded)."""
    given = {
        "p99_ms": p99_ms,
        "error_rate": error_rate,
        "window_s": window,
        "drift_psi": drift_psi,
        "min_online_accuracy": min_online_accuracy,
        "max_accuracy_drop": max_accuracy_drop,
        "max_online_rmse": max_online_rmse,
        "max_rmse_ratio": max_rmse_ratio,
        "quality_min_rows": quality_min_rows,
        "quality_window_s": quality_window,
    }
    changes: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    for name in off or []:
        if name not in THRESHOLDS:
            fail(f"--off takes one of {', '.join(THRESHOLDS)}, not {name!r}", 2)
        if THRESHOLDS[name] in changes:
            fail(f"--{name} and --off {name} contradict each other", 2)
        changes[THRESHOLDS[name]] = None
    path = f"/api/v1/slos/{quote(model, safe='')}"
    with MonitorClient(timeout=10) as client:
        current = client.json("PUT", path, json=changes) if changes else client.json("GET", path)
    rows = [(name, _shown(current.get(name)), meaning) for name, meaning in SHOWN]
    print_fields(f"SLOs of {model}", rows, set(changes))
