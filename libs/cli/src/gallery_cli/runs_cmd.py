"""`gallery runs ...`: training runs recorded by the trainer, listed and compared."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from .console import console, say
from .service_client import project_params
from .train_cmd import TrainerClient, fmt_value, print_run

app = typer.Typer(help="Training runs: list, show, compare.", no_args_is_help=True)


@app.command("list")
def list_runs(
    model: Annotated[str | None, typer.Option(help="Only runs of this model.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
) -> None:
    """The latest runs, newest first, with their headline metrics."""
    with TrainerClient() as client:
        params: dict[str, Any] = {"limit": limit, **({"model": model} if model else {}), **project_params()}
        runs = client.json("GET", "/api/v1/runs", params=params)
    if not runs:
        say("no runs yet")
        return
    table = Table(show_header=True)
    table.add_column("run", no_wrap=True)
    table.add_column("model")
    table.add_column("status", no_wrap=True)
    table.add_column("started (UTC)")
    for column in ("secs", "val acc", "test acc"):
        table.add_column(column, justify="right")
    for run in runs:
        metrics = run.get("metrics", {})
        table.add_row(
            run["id"],
            run["model"],
            run["status"],
            run["started_at"][:19].replace("T", " "),
            fmt_value(run.get("system", {}).get("duration_seconds")),
            fmt_value(metrics.get("val_accuracy")),
            fmt_value(metrics.get("test_accuracy")),
        )
    console.print(table)


@app.command()
def show(run_id: Annotated[str, typer.Argument(help="Run id.")]) -> None:
    """One run's metrics and artifacts."""
    with TrainerClient() as client:
        print_run(client.json("GET", f"/api/v1/runs/{run_id}"))


@app.command()
def compare(
    a: Annotated[str, typer.Argument(help="Run id.")], b: Annotated[str, typer.Argument(help="Run id.")]
) -> None:
    """The parameters that differ between two runs, and their metrics side by side."""
    with TrainerClient() as client:
        diff = client.json("GET", "/api/v1/runs/compare", params={"a": a, "b": b})
    params = Table(title=f"parameters that differ ({diff['params_same']} equal)", show_header=True)
    for column in ("parameter", a, b):
        params.add_column(column, overflow="fold")
    for key, pair in diff["params_differ"].items():
        params.add_row(key, fmt_value(pair["a"]), fmt_value(pair["b"]))
    console.print(params)
    metrics = Table(title="metrics", show_header=True)
    for column in ("metric", a, b, "b - a"):
        metrics.add_column(column, justify="right")
    for key, pair in diff["metrics"].items():
        metrics.add_row(key, fmt_value(pair["a"]), fmt_value(pair["b"]), fmt_value(pair["delta"]))
    console.print(metrics)
