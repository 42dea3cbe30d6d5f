"""The trainer's side of a federated job: plan it, run the Flower coordinator, export the model it made.

`run_job` hands a spec with `engine.kind: federated` here. The trainer's process prepares only its own
data (`data`: the coordinator's reference set, whose test split is what the gate evaluates; it never
trains on it), draws the initial weights with the same `build_network` every engine uses, and starts
`flower_server` in Flower's interpreter. It follows the rounds through `metrics.jsonl` like the ranks'
epochs; it never opens a site's files. At the end it loads the aggregated weights into the network
with the federated standardisation and exports it like any other engine's model.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from gallery_common.artifacts import ArtifactStore
from gallery_common.contracts.refs import FederatedLineage, FederatedSite, PrivacyBudget
from gallery_common.nn import ExportedModel, build_network
from gallery_trainer.engine.job import LOG_FILE, WEIGHTS_FILE
from gallery_trainer.failures import JobCancelled, TrainingFailed
from gallery_trainer.federated.plan import (
    ERROR_FILE,
    FINAL_WEIGHTS_FILE,
    INITIAL_WEIGHTS_FILE,
    METRICS_FILE,
    RESULT_FILE,
    FederationPlan,
)
from gallery_trainer.federated.relay import (
    FederationError,
    coordinator_site_tokens,
    coordinator_tls,
    flower_environment,
    flower_python,
    read_message,
    write_message,
)
from gallery_trainer.pipeline import JobOutputs, PreparedJob, ProgressUpdate, export_outputs, prepare_job
from gallery_trainer.prepare import FeatureTransform
from gallery_trainer.spec import JobSpec
from gallery_trainer.tracking import MetricsTail

POLL_SECONDS = 0.25
STOP_GRACE_SECONDS = 10.0
SERVER_MODULE = "gallery_trainer.federated.flower_server"


def _initial_weights(
    spec: JobSpec, n_features: int, n_outputs: int, image_shape: tuple[int, int, int] | None
) -> list[np.ndarray]:
    """The trainable weights every site starts from (the preprocessing buffers are not exchanged)."""
    torch.manual_seed(spec.training.seed)
    # mean 0, scale 1: the shapes of the layers do not depend on the standardisation, which the sites
    # aggregate in round 0 and every site sets in its own network's buffers
    identity = FeatureTransform(np.zeros(n_features, np.float32), np.ones(n_features, np.float32))
    network = build_network(spec.model, identity, n_outputs, image_shape)
    return [p.detach().numpy().copy() for p in network.parameters()]


def plan_federation(spec: JobSpec, workdir: Path, store: ArtifactStore | None) -> tuple[PreparedJob, FederationPlan]:
    """Prepare the coordinator's own splits as any job does, then write the plan and the initial weights
    for `flower_server`. The preprocessing fitted here is replaced by the federated one at the end."""
    prepared = prepare_job(spec, workdir, store)
    job = prepared.job
    site_job = {
        "spec": spec.model_dump(mode="json"),
        "n_features": job.n_features,
        "n_outputs": job.n_outputs,
        "image_shape": list(job.image_shape) if job.image_shape else None,
    }
    engine = spec.engine
    plan = FederationPlan(
        address=engine.address,
        rounds=engine.rounds,
        strategy=engine.strategy,
        min_sites=engine.min_sites,
        fraction_fit=engine.fraction_fit,
        local_epochs=engine.local_epochs,
        proximal_mu=engine.proximal_mu,
        round_timeout_s=engine.round_timeout_s,
        standardize=spec.preparation.standardize,
        seed=spec.training.seed,
        n_features=job.n_features,
        job=json.dumps(site_job),
    )
    try:
        plan = replace(plan, tls=coordinator_tls(), site_tokens=coordinator_site_tokens())
    except FederationError as exc:
        raise TrainingFailed(str(exc)) from None
    if engine.secure_aggregation is not None:
        secagg = engine.secure_aggregation
        plan = replace(
            plan,
            secagg_num_shares=secagg.num_shares,
            secagg_reconstruction_threshold=secagg.reconstruction_threshold,
            secagg_clipping_range=secagg.clipping_range,
        )
    if engine.differential_privacy is not None:
        dp = engine.differential_privacy
        plan = replace(
            plan, dp_noise_multiplier=dp.noise_multiplier, dp_clipping_norm=dp.clipping_norm, dp_delta=dp.delta
        )
    for stale in (METRICS_FILE, RESULT_FILE, ERROR_FILE, FINAL_WEIGHTS_FILE, WEIGHTS_FILE):
        (workdir / stale).unlink(missing_ok=True)
    plan.save(workdir)
    with open(workdir / INITIAL_WEIGHTS_FILE, "wb") as out:
        write_message(out, {}, _initial_weights(spec, job.n_features, job.n_outputs, job.image_shape))
    return prepared, plan


def _run_coordinator(
    workdir: Path,
    rounds: int,
    emit: Callable[[ProgressUpdate], None],
    cancel: threading.Event | None,
) -> None:
    """Run `flower_server` until it ends, reporting each round; TrainingFailed with its reason if it fails."""
    try:
        python = flower_python()
    except FederationError as exc:
        raise TrainingFailed(str(exc)) from None
    tail = MetricsTail(workdir / METRICS_FILE)
    latest: dict[str, float] = {}
    with open(workdir / LOG_FILE, "ab") as log:
        process = subprocess.Popen(
            [str(python), "-m", SERVER_MODULE, str(workdir)],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=flower_environment(),
        )
        try:
            while True:
                running = process.poll() is None
                if cancel is not None and cancel.is_set():
                    process.terminate()
                    process.wait(STOP_GRACE_SECONDS)
                    raise JobCancelled("the job was cancelled")
                for record in tail.read_new():
                    latest.update({k: float(v) for k, v in record.items() if k not in ("kind", "time")})
                    server_round = int(record.get("round", 0))
                    emit(ProgressUpdate("training", server_round, rounds, server_round, dict(latest)))
                if not running:
                    break
                time.sleep(POLL_SECONDS)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if process.returncode != 0:
        error = workdir / ERROR_FILE
        if error.exists():
            raise TrainingFailed(json.loads(error.read_text())["error"])
        raise TrainingFailed(f"the federation's coordinator exited with status {process.returncode} (see train.log)")


def _save_model(spec: JobSpec, prepared: PreparedJob, result: dict[str, Any], weights: list[np.ndarray]) -> None:
    """The aggregated weights in the network with the federated standardisation, saved as any engine's."""
    job = prepared.job
    transform = result["transform"]
    job.transform = FeatureTransform(
        np.asarray(transform["mean"], np.float32), np.asarray(transform["scale"], np.float32)
    )
    job.save()
    network = build_network(spec.model, job.transform, job.n_outputs, job.image_shape)
    with torch.no_grad():
        for param, value in zip(network.parameters(), weights, strict=True):
            param.copy_(torch.from_numpy(value))
    model = ExportedModel(network, job.target)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(job.workdir / WEIGHTS_FILE))


def _training_summary(spec: JobSpec, result: dict[str, Any], seconds: float) -> dict[str, Any]:
    """What `export_outputs` reads of a training (the ranks' result.json), for the federation."""
    sites, rounds = result["sites"], result["rounds_run"]
    examples = sum(int(site["examples"]) for site in sites)
    return {
        "engine": "federated",
        "world_size": len(sites),
        "data_parallel": len(sites),
        "pipeline_stages": 1,
        "zero_stage": None,
        "precision": "fp32",
        "notes": [],
        "epochs_run": rounds,
        "best_epoch": rounds,
        "stopped_early": False,
        "samples_per_sec": examples * spec.engine.local_epochs * rounds / max(seconds, 1e-9),
        "kept": {k: result["final"][k] for k in ("train_loss", "val_loss", "val_accuracy") if k in result["final"]},
    }


def _lineage_and_figures(spec: JobSpec, result: dict[str, Any]) -> tuple[FederatedLineage, dict[str, float]]:
    """The model's federated lineage, and the run's federated figures (the last round's per site)."""
    final = result["final"]
    figures = {
        "rounds_run": float(result["rounds_run"]),
        "sites": float(len(result["sites"])),
        "round_seconds": float(result["round_seconds"]),
        "bytes_per_site_per_round": float(result["bytes_per_site_per_round"]),
        **{k: float(v) for k, v in final.items() if k.startswith("site.") or k == "worst_site_val_accuracy"},
    }
    privacy = PrivacyBudget(**result["privacy"]) if result.get("privacy") else None
    if privacy is not None:
        figures |= {"dp_epsilon": privacy.epsilon, "dp_delta": privacy.delta}
    lineage = FederatedLineage(
        strategy=spec.engine.strategy,
        rounds=result["rounds_run"],
        min_sites=spec.engine.min_sites,
        sites=[
            FederatedSite(name=s["name"], data_fingerprint=s["fingerprint"], examples=s["examples"], rounds=s["rounds"])
            for s in result["sites"]
        ],
        privacy=privacy,
        secure_aggregation=spec.engine.secure_aggregation is not None,
    )
    return lineage, figures


def run_federated_job(
    spec: JobSpec,
    workdir: Path,
    *,
    store: ArtifactStore | None = None,
    on_progress: Callable[[ProgressUpdate], None] | None = None,
    cancel: threading.Event | None = None,
) -> JobOutputs:
    """Train `spec` on the sites that join the federation and return the exported model's outputs."""

    def emit(update: ProgressUpdate) -> None:
        if on_progress is not None:
            on_progress(update)

    rounds = spec.engine.rounds
    workdir.mkdir(parents=True, exist_ok=True)
    emit(ProgressUpdate("preparing", 0, rounds, 0))
    prepared, _ = plan_federation(spec, workdir, store)
    emit(ProgressUpdate("training", 0, rounds, 0))
    started = time.perf_counter()
    _run_coordinator(workdir, rounds, emit, cancel)
    seconds = time.perf_counter() - started
    result = json.loads((workdir / RESULT_FILE).read_text())
    with open(workdir / FINAL_WEIGHTS_FILE, "rb") as final:
        _, weights = read_message(final)
    _save_model(spec, prepared, result, weights)
    lineage, figures = _lineage_and_figures(spec, result)
    emit(ProgressUpdate("exporting", result["rounds_run"], rounds, 0, figures))
    training = _training_summary(spec, result, seconds)
    outputs = export_outputs(spec, prepared, training, None, extra_metrics=figures, federation=lineage)
    emit(ProgressUpdate("done", result["rounds_run"], rounds, 0, outputs.metrics))
    return outputs
