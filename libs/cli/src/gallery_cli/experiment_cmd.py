"""`gallery experiment ...`: online A/B tests between serving versions, run by the deployer."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from .console import console, fail, say
from .service_client import DeployerClient, project_params

app = typer.Typer(help="Online experiments: start, list, show, stop.", no_args_is_help=True)
METRICS = ("accuracy", "reward", "squared_error", "p99", "error_rate")


def numbers(text: str, what: str, kind: type[int] | type[float]) -> list[Any]:
    """`3,4` as [3, 4]; anything else exits naming `what`."""
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        fail(f"{what} must be comma-separated numbers, e.g. 3,4; got {text!r}")


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def arms_table(experiment: dict[str, Any]) -> Table:
    """Each arm with its samples, metric and share of traffic."""
    table = Table(title=f"experiment {experiment['id']}: {experiment['model']} on {experiment['metric']}")
    for column in ("version", "role", "samples", experiment["metric"], "traffic"):
        table.add_column(column, justify="left" if column == "role" else "right")
    for arm in experiment["arms"]:
        table.add_row(
            str(arm["version"]), arm["role"], str(arm["samples"]), _figure(arm["mean"]), f"{arm['share']:.0%}"
        )
    return table


def decision(experiment: dict[str, Any]) -> str:
    """One line: what the experiment decided, or where it stands."""
    if experiment["status"] == "running":
        planned = experiment["planned_samples_per_arm"]
        return "running" + (f" (planned: at most {planned} samples per arm)" if planned else "")
    return f"{experiment['status']}: {experiment['reason']}"


@app.command("start")
def start(
    model: Annotated[str, typer.Argument(help="model name")],
    versions: Annotated[str, typer.Option(help="serving versions, the control first, e.g. 3,4")],
    metric: Annotated[
        str, typer.Option(help="accuracy, reward, squared_error (a regressor's, from true values), p99 or error_rate")
    ],
    mde: Annotated[float, typer.Option(help="the smallest difference worth finding (a proportion for accuracy)")],
    split: Annotated[str | None, typer.Option(help="percent per version, e.g. 50,50 (default: even)")] = None,
    alpha: Annotated[float, typer.Option(help="significance level")] = 0.05,
    max_samples: Annotated[int | None, typer.Option(help="no difference past this many samples per arm")] = None,
    policy: Annotated[str, typer.Option(help="fixed split, or bandit (Thompson sampling)")] = "fixed",
    floor: Annotated[float, typer.Option(help="bandit: the least share each arm keeps")] = 0.1,
) -> None:
    """Start an A/B test between versions that serve; the deployer decides it as outcomes arrive."""
    if metric not in METRICS:
        fail(f"--metric must be one of {', '.join(METRICS)}; got {metric!r}")
    if policy not in ("fixed", "bandit"):
        fail(f"--policy must be fixed or bandit; got {policy!r}")
    body: dict[str, Any] = {
        "model": model,
        "versions": numbers(versions, "--versions", int),
        "metric": metric,
        "mde": mde,
        "alpha": alpha,
        "policy": policy,
        "floor": floor,
    }
    if split is not None:
        body["split"] = numbers(split, "--split", float)
    if max_samples is not None:
        body["max_samples_per_arm"] = max_samples
    with DeployerClient() as client:
        experiment = client.json("POST", "/api/v1/experiments", json=body)
    say(f"experiment {experiment['id']} started on {model}: versions {experiment['versions']} ({policy})")


@app.command("list")
def list_experiments(model: Annotated[str | None, typer.Option(help="only this model's")] = None) -> None:
    """Experiments, newest first."""
    with DeployerClient() as client:
        rows = client.json(
            "GET", "/api/v1/experiments", params={**({"model": model} if model else {}), **project_params()}
        )
    if not rows:
        say("no experiments yet: `gallery experiment start MODEL --versions 1,2 --metric accuracy --mde 0.03`")
        return
    table = Table(show_header=True)
    for column in ("id", "model", "versions", "metric", "policy", "status", "winner", "started (UTC)"):
        table.add_column(column, no_wrap=column == "id")
    for row in rows:
        table.add_row(
            row["id"],
            row["model"],
            ",".join(map(str, row["versions"])),
            row["metric"],
            row["policy"],
            row["status"],
            str(row["winner"] or "-"),
            row["started_at"][:19].replace("T", " "),
        )
    console.print(table)


@app.command("show")
def show(experiment_id: Annotated[str, typer.Argument(help="the experiment's id")]) -> None:
    """An experiment's arms and its decision."""
    with DeployerClient() as client:
        experiment = client.json("GET", f"/api/v1/experiments/{experiment_id}")
    console.print(arms_table(experiment))
    say(decision(experiment))


@app.command("stop")
def stop(
    experiment_id: Annotated[str, typer.Argument(help="the experiment's id")],
    reason: Annotated[str, typer.Option(help="why; kept with the experiment")],
) -> None:
    """End a running experiment: the deployments' own split serves again, nothing else moves."""
    with DeployerClient() as client:
        experiment = client.json("POST", f"/api/v1/experiments/{experiment_id}/stop", json={"reason": reason})
    say(f"experiment {experiment['id']} stopped")
