"""`gallery usage`: what the gateways metered, per period, model, version and caller (the deployer's report)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from .console import console, fail, say
from .service_client import DeployerClient

FORMATS = ("table", "csv", "json")


def usage_table(report: dict[str, Any]) -> Table:
    """One row per period, model, version and caller, and the totals."""
    table = Table(title=f"usage per {report['period']}, {report['since']} to {report['until']}", show_header=True)
    for column in ("period start", "model", "version", "caller", "requests", "rows", "compute s"):
        table.add_column(column, justify="right" if column in ("requests", "rows", "compute s") else "left")
    for row in report["rows"]:
        table.add_row(
            row["period_start"],
            row["model"],
            row["version"],
            row["caller"],
            str(row["requests"]),
            str(row["rows"]),
            f"{row['compute_seconds']:.3f}",
        )
    totals = report["totals"]
    table.add_row("total", "", "", "", str(totals["requests"]), str(totals["rows"]), f"{totals['compute_seconds']:.3f}")
    return table


def usage(
    since: Annotated[str, typer.Option(help="ISO 8601 time or a span back from now (30m, 24h, 7d)")] = "24h",
    until: Annotated[str | None, typer.Option(help="ISO 8601 time or a span back from now; default now")] = None,
    period: Annotated[str, typer.Option(help="hour or day")] = "hour",
    model: Annotated[str | None, typer.Option(help="only this model")] = None,
    caller: Annotated[str | None, typer.Option(help="only this caller (a token's name)")] = None,
    format_: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
) -> None:
    """Requests, rows and compute seconds per period, model, version and caller, as the gateways metered them."""
    if format_ not in FORMATS:
        fail(f"--format {format_!r} is not one of: {', '.join(FORMATS)}")
    params = {"since": since, "period": period, "format": "csv" if format_ == "csv" else "json"}
    params.update({name: value for name, value in (("until", until), ("model", model), ("caller", caller)) if value})
    with DeployerClient() as client:
        answer = client.request("GET", "/api/v1/usage", params=params)
    if format_ == "csv":
        typer.echo(answer.text, nl=False)
        return
    report = answer.json()
    if format_ == "json":
        typer.echo(json.dumps(report, indent=2))
        return
    if not report["rows"]:
        say(f"no usage metered from {report['since']} to {report['until']}")
        return
    console.print(usage_table(report))
