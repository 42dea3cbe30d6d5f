"""`gallery deploy`, `promote`, `rollback`, `deployments`, `variants` and `policy`: the deployer from the terminal."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table

from .console import console, say
from .optimize_cmd import parse_ref
from .service_client import DeployerClient, project_params


def deployments_table(rows: list[dict[str, Any]]) -> Table:
    """Deployments with stage, traffic, replicas and health."""
    table = Table(title="deployments", show_header=True)
    for column in ("model", "version", "variant", "stage", "traffic", "replicas", "state", "note"):
        table.add_column(column, justify="right" if column in ("version", "traffic") else "left")
    for row in rows:
        explained = row["stage"] in ("failed", "rolled_back", "held")
        note = row.get("fallback") or (row.get("reason") if explained else "") or ""
        table.add_row(
            row["model"],
            str(row["version"]),
            row["variant"],
            row["stage"],
            f"{row['traffic_percent']:.0f}%",
            f"{row['ready_replicas']}/{row['desired_replicas']}",
            row["state"],
            note,
        )
    return table


def deploy(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION of a registered version")],
    canary: Annotated[float | None, typer.Option(help="share of traffic for the new version, in percent")] = None,
) -> None:
    """Deploy a registered version: a canary beside production, or production if it is the model's first."""
    model, version = parse_ref(ref)
    body: dict[str, Any] = {"model": model, "version": version}
    if canary is not None:
        body["canary_percent"] = canary
    with DeployerClient(timeout=300) as client:
        row = client.json("POST", "/api/v1/deployments", json=body)
    say(f"{model}:{version} is {row['stage']} with {row['traffic_percent']:.0f}% of traffic ({row['state']})")


def promote(
    model: Annotated[str, typer.Argument(help="model name")],
    reason: Annotated[str, typer.Option(help="recorded with the production alias move")] = "promoted by hand",
) -> None:
    """Give the model's canary all traffic and the production alias."""
    with DeployerClient(timeout=120) as client:
        row = client.json("POST", f"/api/v1/deployments/{model}/promote", json={"reason": reason})
    say(f"{model}:{row['version']} is production with 100% of traffic")


def rollback(
    model: Annotated[str, typer.Argument(help="model name")],
    reason: Annotated[
        str, typer.Option(help="why; recorded in the event and the alias history")
    ] = "rolled back by hand",
) -> None:
    """Take the canary (or, without one, the production version) out of service for the last good version."""
    with DeployerClient(timeout=300) as client:
        row = client.json("POST", f"/api/v1/deployments/{model}/rollback", json={"reason": reason})
    say(f"{model}:{row['version']} serves all traffic again")


def deployments(
    all_: Annotated[bool, typer.Option("--all", help="also retired, rolled-back and failed deployments")] = False,
) -> None:
    """List deployments with their traffic, replicas and health."""
    with DeployerClient() as client:
        rows = client.json("GET", "/api/v1/deployments", params={"all": str(all_).lower(), **project_params()})
    if not rows:
        say("no deployments yet: `gallery deploy NAME:VERSION`, or train a model and let the lifecycle deploy it")
        return
    console.print(deployments_table(rows))


def _figure(metrics: dict[str, float], name: str, digits: int, scale: float = 1.0) -> str:
    value = metrics.get(name)
    return "-" if value is None else f"{value * scale:.{digits}f}"


# the optimizer's figures a variants table may show: title, metric, digits, scale, suffix
VARIANT_FIGURES = (
    ("accuracy", "accuracy", 2, 100.0, "%"),
    ("rmse", "rmse", 4, 1.0, ""),
    ("p50 ms (b1)", "latency_b1_p50_ms", 3, 1.0, ""),
    ("size KB", "size_bytes", 0, 1 / 1000, ""),
)


def variants_table(title: str, rows: list[dict[str, Any]]) -> Table:
    """One row per variant with its status and the optimizer's figures; only the figures some variant has,
    and the CPUs a variant is built for only when one is, so the table fits a terminal."""
    figures = [f for f in VARIANT_FIGURES if any(f[1] in row["metrics"] for row in rows)]
    targets = any(row["cpu_target"] for row in rows)
    table = Table(title=title, title_justify="left")
    table.add_column("variant", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for name, *_ in figures:
        table.add_column(name, justify="right")
    if targets:
        table.add_column("built for")
    for row in rows:
        marks = (("serving", row["serving"]), ("recommended", row["recommended"]), ("withdrawn", row.get("withdrawn")))
        status = [word for word, on in marks if on]
        cells = [row["variant"], ", ".join(status)]
        cells += [_figure(row["metrics"], metric, digits, scale) + unit for _, metric, digits, scale, unit in figures]
        table.add_row(*cells, *([row["cpu_target"] or "any CPU"] if targets else []))
    return table


def variants(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION of a serving version")],
    serve: Annotated[
        str | None, typer.Option(help="serve this variant instead (fp32: the version's own file), by a rolling update")
    ] = None,
    reason: Annotated[str, typer.Option(help="why; recorded on the deployment and in the audit trail")] = "by hand",
) -> None:
    """Show the variants a serving version can serve (FP32 and what its optimizer built, with the optimizer's
    figures); with --serve, serve another one (an admin token in its project)."""
    model, version = parse_ref(ref)
    path = f"/api/v1/deployments/{quote(model, safe='')}"
    with DeployerClient(timeout=300) as client:
        if serve is not None:
            row = client.json("PUT", f"{path}/variant", json={"version": version, "variant": serve, "reason": reason})
            say(f"{model}:{version} serves {row['variant']} ({row['stage']}, {row['state']})")
        rows = [r for r in client.json("GET", f"{path}/variants") if r["version"] == version]
    if not rows:
        say(f"{model}:{version} does not serve: `gallery deployments` lists what does")
        return
    console.print(variants_table(f"variants of {model}:{version}", rows))
    for row in rows:
        if row.get("withdrawn"):
            say(f"{row['variant']} withdrawn, not rolled in again unless served by hand: {row['withdrawn']}")
