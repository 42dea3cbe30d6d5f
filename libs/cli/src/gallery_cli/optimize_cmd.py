"""`gallery optimize NAME:VERSION`: run the optimizer on a registered version, follow it, print its report."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .console import console, fail, say
from .service_client import OptimizerClient

FINAL_STATES = frozenset({"succeeded", "failed"})


def parse_ref(ref: str) -> tuple[str, int]:
    """NAME:VERSION -> (name, version); exits with a clear line on anything else."""
    name, sep, version = ref.rpartition(":")
    if not sep or not name or not version.isdigit() or int(version) < 1:
        fail(f"expected NAME:VERSION with a version number >= 1, got {ref!r}", 2)
    return name, int(version)


def follow_job(client: OptimizerClient, job: dict[str, Any], poll: float) -> dict[str, Any]:
    """Show the job's step and progress until it ends; returns its final state."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(job["status"], total=1.0, completed=job.get("progress", 0.0))
        while job["status"] not in FINAL_STATES:
            time.sleep(poll)
            job = client.json("GET", f"/api/v1/optimize/{job['id']}")
            description = job.get("step") or job["status"] if job["status"] == "running" else job["status"]
            progress.update(task, description=description, completed=job.get("progress", 0.0))
    return job


def _ms(value: Any) -> str:
    return "" if value is None else f"{value:.3f}"


def _pct(value: Any) -> str:
    return "" if value is None else f"{value * 100:.2f}%"


def _size(value: Any) -> str:
    return "" if value is None else f"{value / 1024:.1f} KiB"


def report_table(report: dict[str, Any]) -> Table:
    """The report's variants as a table: size, latency, the score (accuracy and macro-F1, or a regressor's
    r2 and rmse) and its change from FP32, the recommended one starred."""
    recommended = report.get("recommended")
    regression = report.get("task") == "regression"
    table = Table(title=f"{report.get('model')} version {report.get('version')}: variants", show_header=True)
    scores = ("r2", "rmse", "Δ r2") if regression else ("accuracy", "macro-F1", "Δ acc")
    for column, justify in (
        ("variant", "left"),
        ("size", "right"),
        ("b1 p50 ms", "right"),
        ("b32 p50 ms", "right"),
        ("b32 p99 ms", "right"),
        ("rows/s", "right"),
        *((score, "right") for score in scores),
        ("in budget", "center"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in report.get("variants", []):
        name = row["name"] + (" ★" if row["name"] == recommended else "")
        if row.get("error"):
            table.add_row(name, "[red]failed[/red]", *[""] * 8)
            continue
        delta = row.get("r2_delta" if regression else "accuracy_delta")
        throughput = row.get("throughput_per_s")
        if regression:
            figures = (_num(row.get("r2")), _num(row.get("rmse")))
        else:
            figures = (_pct(row.get("accuracy")), _pct(row.get("macro_f1")))
        table.add_row(
            name,
            _size(row.get("size_bytes")),
            _ms(row.get("latency_b1_p50_ms")),
            _ms(row.get("latency_b32_p50_ms")),
            _ms(row.get("latency_b32_p99_ms")),
            "" if throughput is None else f"{throughput:,.0f}",
            *figures,
            "" if delta is None else f"{delta * 100:+.2f} pt",
            "yes" if row.get("within_budget") else "no",
        )
    return table


def _num(value: Any) -> str:
    return "" if value is None else f"{value:.4f}"


def print_report(report: dict[str, Any]) -> None:
    console.print(report_table(report))
    say(f"recommended: {report.get('recommended')} ({report.get('recommendation_reason', '')})")
    for row in report.get("variants", []):
        if row.get("error"):
            say(f"{row['name']} failed: {row['error']}")
    if report.get("edge_bundle_error"):
        say(f"edge bundle failed: {report['edge_bundle_error']}")


def optimize(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION of a registered version.")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the job and print its report.")] = True,
    variant: Annotated[
        list[str] | None, typer.Option("--variant", help="Build only these variants (repeatable); default: policy.")
    ] = None,
    accuracy_budget: Annotated[
        float | None, typer.Option(help="Accuracy a recommended variant may lose (0.01 = 1 point); default: policy.")
    ] = None,
    poll: Annotated[float, typer.Option(help="Seconds between progress checks.", min=0.1)] = 1.0,
) -> None:
    """Optimize a registered version (GALLERY_OPTIMIZER_URL): build, measure and attach its variants."""
    name, version = parse_ref(ref)
    overrides: dict[str, Any] = {}
    if variant:
        overrides["variants"] = variant
    if accuracy_budget is not None:
        overrides["accuracy_budget"] = accuracy_budget
    body: dict[str, Any] = {"model": name, "version": version, "policy": overrides or None}
    with OptimizerClient() as client:
        # `model.validated` starts a job by itself: follow that one rather than be refused a second
        existing = [
            j
            for j in client.json("GET", "/api/v1/optimize", params={"model": name})
            if j["version"] == version and j["status"] != "failed"
        ]
        if existing and not overrides:
            job = existing[0]
            say(f"following job {job['id']} for {name}:{version} ({job['status']})")
        else:
            job = client.json("POST", "/api/v1/optimize", json=body)
            say(f"job {job['id']} queued: {name}:{version}")
        if not wait:
            return
        job = follow_job(client, job, poll)
        if job["status"] != "succeeded":
            fail(f"job {job['id']} failed: {job.get('error') or 'no reason given'}")
        print_report(job.get("report") or {})
        say(f"model.optimized published for {name}:{version}; recommended {job.get('recommended')}")
