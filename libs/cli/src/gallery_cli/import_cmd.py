"""`gallery models import`: a classifier trained elsewhere (an ONNX file) becomes a version, through the
trainer's POST /api/v1/imports, then waits for the validation gate's verdict in the registry."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import typer

from gallery_common.contracts.registry import VersionPublic, VersionStatus

from .console import console, fail, say
from .service_client import RegistryServiceClient, TrainerClient, model_path

_FILE = {"exists": True, "dir_okay": False, "readable": True}
_VERDICTS = (VersionStatus.validated, VersionStatus.rejected)


def import_model(
    onnx: Annotated[Path, typer.Argument(help="The classifier, one ONNX file (weights inside).", **_FILE)],
    name: Annotated[str, typer.Option("--name", help="The model to add the version to (created if new).")],
    train: Annotated[Path, typer.Option(help="NPZ with x and y: rows the model was trained on.", **_FILE)],
    test: Annotated[Path, typer.Option(help="NPZ with x and y: rows it never saw (the gate's test).", **_FILE)],
    validation: Annotated[
        Path | None, typer.Option(help="NPZ with x and y: the canary's replay (default: the test rows).", **_FILE)
    ] = None,
    class_names: Annotated[
        str | None, typer.Option("--class-names", help="Comma-separated, one per class in index order.")
    ] = None,
    feature_names: Annotated[
        str | None, typer.Option("--feature-names", help="Comma-separated, one per feature in column order.")
    ] = None,
    scores: Annotated[str, typer.Option(help="What a classifier outputs: auto, logits or probabilities.")] = "auto",
    task: Annotated[str, typer.Option(help="classification, or regression (y: numbers to predict).")] = (
        "classification"
    ),
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait for the validation gate's verdict in the registry.")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the verdict.", min=1)] = 300.0,
) -> None:
    """Import a classifier (or a regressor, --task regression) trained elsewhere (skl2onnx, torch.onnx, ...)
    as a new version: adapted to the features/logits contract (a text classifier's: text/logits, its splits'
    x one text per row), checked on the test rows, then validated and deployed as any."""
    if scores not in ("auto", "logits", "probabilities"):
        fail(f"--scores must be auto, logits or probabilities, not {scores!r}")
    if task not in ("classification", "regression"):
        fail(f"--task must be classification or regression, not {task!r}")
    form: dict[str, Any] = {"model": name, "scores": scores, "task": task}
    if class_names:
        form["class_names"] = [n.strip() for n in class_names.split(",")]
    if feature_names:
        form["feature_names"] = [n.strip() for n in feature_names.split(",")]
    with ExitStack() as files, TrainerClient(timeout=600.0) as trainer:
        parts = {
            role: (path.name, files.enter_context(path.open("rb")), "application/octet-stream")
            for role, path in (("onnx", onnx), ("train", train), ("test", test), ("validation", validation))
            if path is not None
        }
        with console.status(f"importing {onnx.name}: adapting and checking it on the test rows"):
            imported = trainer.json("POST", "/api/v1/imports", data=form, files=parts)
    _print_import(imported)
    if not wait:
        return
    version = _wait_for_verdict(name, imported["run_id"], timeout)
    if version.status == VersionStatus.rejected:
        reasons = "; ".join(version.rejection_reasons or []) or "no reason given"
        fail(f"{name}:{version.version} rejected by the validation gate: {reasons}")
    metric = "r2" if task == "regression" else "accuracy"
    value = (version.evaluation_report or {}).get(metric)
    shown = f" (the gate measured {metric} {value:.4f})" if isinstance(value, float) else ""
    say(
        f"{name}:{version.version} validated{shown}; the optimizer and the deployer take it from here "
        f"(gallery models show {name}:{version.version}, gallery deployments)"
    )


def _print_import(imported: dict[str, Any]) -> None:
    again = " (imported before: nothing new stored)" if imported["already_imported"] else ""
    outputs = imported["outputs"]
    if imported["task"] == "regression":
        shape = f"{outputs} target{'s' if outputs != 1 else ''}, rmse {imported['metrics']['test_rmse']:.4g}"
    else:
        shape = f"{outputs} classes, accuracy {imported['metrics']['test_accuracy']:.4f}"
    takes = "texts" if imported.get("text") else f"{imported['features']} features"
    say(f"imported {imported['model']} as run {imported['run_id']}{again}: {takes}, {shape} on the test rows")
    for change in imported["changes"]:
        say(f"  adapted: {change}")
    if not imported["changes"]:
        contract = "text/logits" if imported.get("text") else "features/logits"
        say(f"  the file already had the {contract} contract: stored unchanged")


def _wait_for_verdict(name: str, run_id: str, timeout: float) -> VersionPublic:
    """The version the gate registered for `run_id`, once it is validated or rejected."""
    deadline = time.monotonic() + timeout
    with (
        RegistryServiceClient() as registry,
        console.status("waiting for the validation gate (registry)") as status,
    ):
        while True:
            found = _version_of_run(registry, name, run_id)
            if found is not None and found.status in _VERDICTS:
                return found
            if found is not None:
                status.update(f"{name}:{found.version} {found.status} (validation gate)")
            if time.monotonic() > deadline:
                where = f"{name}:{found.version} is still {found.status}" if found else "no version registered yet"
                fail(f"no verdict within {timeout:g} s: {where} (see `gallery events tail`)")
            time.sleep(0.5)


def _version_of_run(registry: RegistryServiceClient, name: str, run_id: str) -> VersionPublic | None:
    answer = registry.request("GET", f"{model_path(name)}/versions", answers=(404,), params={"limit": 20})
    if answer.status_code == 404:
        return None  # the gate has not registered the model yet
    for version in answer.json()["versions"]:
        if version.get("run_id") == run_id:
            return registry.parse(VersionPublic, version, f"a version of {name}")
    return None
