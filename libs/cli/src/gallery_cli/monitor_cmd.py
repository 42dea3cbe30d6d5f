"""`gallery monitor NAME`: a model's serving figures, online quality, drift and open alerts, refreshing in place."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .console import console, fail
from .service_client import MonitorClient

DRIFT_FEATURES_SHOWN = 5
NONE = "-"  # a figure the monitor does not have (no requests, no histogram yet)


@dataclass(frozen=True)
class MonitorView:
    """What the monitor said about one model at one moment."""

    model: dict[str, Any]
    figures: dict[str, Any]
    drift: dict[str, Any]
    alerts: list[dict[str, Any]]
    slo: dict[str, Any]
    quality: dict[str, Any]
    fetched_at: datetime


def fetch_view(client: MonitorClient, name: str, window_s: float) -> MonitorView:
    """Ask the monitor for everything the view shows; exits with one line if it cannot answer."""
    models = client.json("GET", "/api/v1/models")
    model = next((m for m in models if m["model"] == name), None)
    if model is None:
        known = ", ".join(m["model"] for m in models) or "none yet"
        fail(f"the monitor has seen no event about model {name!r} (models it knows: {known})")
    path = quote(name, safe="")
    return MonitorView(
        model=model,
        figures=client.json("GET", f"/api/v1/models/{path}/figures", params={"window_s": window_s}),
        drift=client.json("GET", f"/api/v1/models/{path}/drift"),
        alerts=client.json("GET", "/api/v1/alerts", params={"model": name, "open": "true"}),
        slo=client.json("GET", f"/api/v1/slos/{path}"),
        quality=client.json("GET", f"/api/v1/models/{path}/quality"),
        fetched_at=datetime.now().astimezone(),
    )


def _num(value: float | None, digits: int = 1) -> str:
    return NONE if value is None else f"{value:,.{digits}f}"


def _pct(share: float | None) -> str:
    return NONE if share is None else f"{share * 100:.2f}%"


def _limited(text: str, value: float | None, limit: float | None) -> Text:
    """A figure, in red when it is over its SLO limit."""
    over = value is not None and limit is not None and value > limit
    return Text(text, style="bold red" if over else "")


def _clock(iso: str | None) -> str:
    if not iso:
        return NONE
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone()
    return moment.strftime("%H:%M:%S") if moment.date() == datetime.now().date() else moment.strftime("%Y-%m-%d %H:%M")


def _seconds(value: float) -> str:
    return f"{value:g} s" if value < 120 else f"{value / 60:g} min"


def figures_table(view: MonitorView) -> Table:
    """Per served version: stage and traffic from the lifecycle, rates and latency from the model servers."""
    stages = {str(v["version"]): v for v in view.model["versions"]}
    figures = view.figures
    table = Table(title=f"serving, last {_seconds(figures['window_s'])}", title_justify="left", show_header=True)
    for column in ("version", "variant", "stage", "traffic", "req/s", "errors", "p50 ms", "p95 ms", "p99 ms", "batch"):
        table.add_column(column, justify="left" if column in ("variant", "stage") else "right")
    rows = sorted(figures["versions"], key=lambda v: int(v["version"]) if str(v["version"]).isdigit() else 0)
    for row in reversed(rows):
        lifecycle = stages.get(str(row["version"]), {})
        traffic = lifecycle.get("traffic_percent")
        table.add_row(
            f"v{row['version']}",
            row["variant"],
            lifecycle.get("stage") or NONE,
            NONE if traffic is None else f"{traffic:.0f}%",
            _num(row["rps"]),
            _limited(_pct(row["error_rate"]), row["error_rate"], view.slo.get("error_rate")),
            _num(row["p50_ms"], 2),
            _num(row["p95_ms"], 2),
            _limited(_num(row["p99_ms"], 2), row["p99_ms"], view.slo.get("p99_ms")),
            _num(row["batch_size_mean"]),
        )
    if not rows:
        table.add_row("", "no traffic in this window", *[""] * 8)
    cache = figures.get("cache_hit_rate")
    if cache is not None:
        table.caption = f"gateway cache hit rate {_pct(cache)}"
    return table


def _points(online: float | None, gate: float | None) -> str:
    """Online accuracy against the gate's, in points, as the web pages write it: "+1.2", "0.0", "-3.4"."""
    if online is None or gate is None:
        return NONE
    rounded = round((online - gate) * 100, 1)
    return "0.0" if rounded == 0 else f"{rounded:+.1f}"


def _named_variants(version: dict[str, Any]) -> list[dict[str, Any]]:
    """A version's variants as rows of their own when the route named them (which variant gave the answers)."""
    variants: list[dict[str, Any]] = version.get("variants") or []
    return variants if len(variants) > 1 or (variants and variants[0]["variant"]) else []


def quality_view(quality: dict[str, Any]) -> RenderableType:
    """Per version with feedback: its online accuracy (and a regressor's rmse) beside the gate's, and under it
    each variant that answered beside the optimizer's figures of that variant."""
    window = _seconds(quality["window_s"])
    versions = sorted(quality["versions"], key=lambda v: int(v["version"]) if str(v["version"]).isdigit() else 0)
    if not versions:
        return Text(f"online quality: no feedback on answers of the last {window}", style="dim")
    valued = any(v["valued_rows"] for v in versions)
    table = Table(title=f"online quality, answers of the last {window}", title_justify="left", show_header=True)
    columns = ["version", "feedback", "labelled", "accuracy", "test", "Δ pt"]
    columns += ["rmse", "test rmse"] if valued else []
    for column in columns:
        table.add_column(column, justify="right")
    table.caption = "test: the gate's for a version, the optimizer's for a variant (same test split)"

    def cells(
        name: str | Text, figures: dict[str, Any], test_accuracy: float | None, test_rmse: float | None
    ) -> list[str | Text]:
        points = _points(figures["accuracy"], test_accuracy)
        row: list[str | Text] = [
            name,
            f"{figures['outcomes']:,}",
            f"{figures['labelled_rows']:,}",
            _pct(figures["accuracy"]),
            _pct(test_accuracy),
            Text(points, style="bold red" if points.startswith("-") else ""),
        ]
        return row + ([_num(figures["rmse"], 3), _num(test_rmse, 3)] if valued else [])

    for v in reversed(versions):
        table.add_row(*cells(f"v{v['version']}", v, v["gate_accuracy"], v["gate_rmse"]))
        for variant in _named_variants(v):
            name = Text(f"· {variant['variant'] or '(unnamed)'}", style="dim")
            table.add_row(*cells(name, variant, variant["test_accuracy"], variant["test_rmse"]))
    return table


def drift_view(drift: dict[str, Any], psi_limit: float | None) -> RenderableType:
    """The drift verdict in one line, then the features with the largest PSI and the reasons."""
    if drift["drifted"]:
        verdict = Text("DRIFTED", style="bold red")
    elif drift["samples"]:
        verdict = Text("no drift", style="green")
    else:
        verdict = Text("no samples yet", style="dim")
    scope = "all versions" if drift.get("version") is None else f"version {drift['version']}"
    summary = Text.assemble(
        ("drift: ", "bold"),
        verdict,
        f"  {scope}, {drift['samples']:,} samples over the last {_seconds(drift['window_s'])}",
        "" if drift.get("prediction_psi") is None else f", prediction PSI {drift['prediction_psi']:.3f}",
    )
    parts: list[RenderableType] = [summary]
    features = sorted(drift["features"], key=lambda f: f["psi"], reverse=True)[:DRIFT_FEATURES_SHOWN]
    if features:
        table = Table(show_header=True, box=None, padding=(0, 2))
        for column in ("feature", "PSI", "KS", "p-value"):
            table.add_column(column, justify="right")
        for f in features:
            p_value = f"{f['p_value']:.1e}" if f["p_value"] < 0.001 else f"{f['p_value']:.3f}"
            # a text model's rows have names ("tokens", "text length (tokens)") and their own PSI limit
            limit = f.get("threshold") or psi_limit
            table.add_row(
                str(f.get("name") or f["feature"]),
                _limited(f"{f['psi']:.3f}", f["psi"], limit),
                f"{f['ks']:.3f}",
                p_value,
            )
        parts.append(table)
    style = "red" if drift["drifted"] else "dim"
    parts.extend(Text(f"  - {reason}", style=style) for reason in drift.get("reasons", []))
    return Group(*parts)


def alerts_table(alerts: list[dict[str, Any]]) -> RenderableType:
    """Open alerts, newest first."""
    if not alerts:
        return Text("no open alerts", style="green")
    table = Table(title="open alerts", title_justify="left", show_header=True)
    for column in ("opened", "kind", "version", "reason"):
        table.add_column(column)
    for alert in alerts:
        version = NONE if alert.get("version") is None else f"v{alert['version']}"
        table.add_row(_clock(alert["opened_at"]), alert["kind"], version, alert["reason"])
    return table


def render(view: MonitorView) -> Group:
    """The whole screen for one moment."""
    production = view.model.get("aliases", {}).get("production")
    header = Text.assemble(
        (view.model["model"], "bold"),
        f"  production v{production}" if production is not None else "  no production version",
        (f"  updated {view.fetched_at:%H:%M:%S}", "dim"),
    )
    psi_limit = view.slo.get("drift_psi")
    return Group(
        header,
        figures_table(view),
        quality_view(view.quality),
        drift_view(view.drift, psi_limit),
        alerts_table(view.alerts),
    )


def monitor(
    model: Annotated[str, typer.Argument(help="model name")],
    once: Annotated[bool, typer.Option("--once", help="print once and exit (for scripts)")] = False,
    interval: Annotated[float, typer.Option(min=0.2, help="seconds between refreshes")] = 2.0,
    window: Annotated[float, typer.Option(min=1.0, help="seconds of traffic the figures cover")] = 60.0,
) -> None:
    """Show a model's figures per version, its online quality, drift and open alerts from the monitor, refreshing
    until Ctrl-C."""
    with MonitorClient(timeout=10) as client:
        view = fetch_view(client, model, window)
        if once:
            console.print(render(view))
            return
        try:
            with Live(render(view), console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(interval)
                    live.update(render(fetch_view(client, model, window)), refresh=True)
        except KeyboardInterrupt:
            pass
