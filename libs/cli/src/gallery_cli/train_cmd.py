"""`gallery train SPEC`: submit a training job to the trainer and follow it until its model is published."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .console import console, fail, say
from .service_client import TrainerClient, selected_project

FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


def _content_type(path: Path) -> str:
    return "application/json" if path.suffix.lower() == ".json" else "application/yaml"


def spec_body(spec: Path) -> tuple[bytes, str]:
    """The spec to submit and its content type. With `--project` (or GALLERY_PROJECT) a spec that names no
    project is sent with `project:` set to it; a spec that names one is sent as written."""
    raw = spec.read_bytes()
    project = selected_project()
    if project is None:
        return raw, _content_type(spec)
    try:
        document = yaml.safe_load(raw)  # JSON is YAML too
    except yaml.YAMLError as exc:
        fail(f"spec {spec}: not YAML or JSON: {exc}")
    if not isinstance(document, dict) or document.get("project"):
        return raw, _content_type(spec)  # the trainer says what is wrong with a spec that is not a mapping
    document["project"] = project
    return json.dumps(document).encode(), "application/json"


def fmt_value(value: Any) -> str:
    """A metric or parameter as a short cell."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def print_run(run: dict[str, Any]) -> None:
    """A finished run's metrics, system figures and artifacts."""
    metrics = Table(title=f"run {run['id']} ({run['model']})", show_header=True)
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    for key, value in sorted(run.get("metrics", {}).items()):
        metrics.add_row(key, fmt_value(value))
    system = run.get("system", {})
    for key in ("duration_seconds", "engine"):
        if system.get(key) is not None:
            metrics.add_row(key, fmt_value(system[key]))
    if system.get("peak_rss_bytes"):
        metrics.add_row("peak RSS MiB", f"{system['peak_rss_bytes'] / 2**20:.0f}")
    console.print(metrics)
    artifacts = Table(title="artifacts", show_header=True)
    artifacts.add_column("role")
    artifacts.add_column("uri", overflow="fold")
    artifacts.add_column("sha256")
    for role, ref in sorted(run.get("artifacts", {}).items()):
        artifacts.add_row(role, ref.get("uri", ""), ref.get("sha256", "")[:16])
    console.print(artifacts)


def follow_job(client: TrainerClient, job: dict[str, Any], poll: float) -> dict[str, Any]:
    """Show the job's progress until it ends; returns its final state."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs  {task.fields[figures]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(job["status"], total=job.get("epochs") or None, figures="")
        while job["status"] not in FINAL_STATES:
            time.sleep(poll)
            job = client.json("GET", f"/api/v1/jobs/{job['id']}")
            metrics = job.get("metrics") or {}
            figures = "  ".join(
                f"{label} {fmt_value(metrics[key] if key in metrics else job.get(key))}"
                for label, key in (("loss", "loss"), ("val acc", "val_accuracy"))
                if job.get(key) is not None or key in metrics
            )
            phase = job.get("phase") or job["status"]
            progress.update(
                task,
                description=phase if job["status"] == "running" else job["status"],
                total=job.get("epochs") or None,
                completed=job.get("epoch", 0),
                figures=figures,
            )
    return job


def train(
    spec: Annotated[Path, typer.Argument(help="Job spec, YAML or JSON.", exists=True, dir_okay=False, readable=True)],
    follow: Annotated[bool, typer.Option("--follow/--no-follow", help="Wait for the job and show progress.")] = True,
    poll: Annotated[float, typer.Option(help="Seconds between progress checks.", min=0.1)] = 1.0,
) -> None:
    """Submit a training job to the trainer (GALLERY_TRAINER_URL) and follow it until model.trained is published."""
    with TrainerClient() as client:
        body, content_type = spec_body(spec)
        job = client.json("POST", "/api/v1/jobs", content=body, headers={"Content-Type": content_type})
        search = f", search {job['search_id']} trial {job['trial']}" if job.get("search_id") else ""
        say(f"job {job['id']} queued: model {job['model']}{search}")
        if not follow:
            return
        job = follow_job(client, job, poll)
        if job["status"] != "succeeded":
            fail(f"job {job['id']} {job['status']}: {job.get('error') or 'no reason given'}")
        say(f"job {job['id']} succeeded: model.trained published for run {job['run_id']}")
        print_run(client.json("GET", f"/api/v1/runs/{job['run_id']}"))
