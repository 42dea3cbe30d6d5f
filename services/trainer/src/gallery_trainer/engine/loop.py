"""One rank's training run: epochs of optimizer steps, evaluation, early stopping, checkpoints, and on
rank 0 the metrics lines, the final weights and the result summary."""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from gallery_common.nn import build_network
from gallery_trainer.augment import Augmenter
from gallery_trainer.engine.base import TrainingBackend
from gallery_trainer.engine.batches import EvalChunk, ShardedBatches, eval_chunks
from gallery_trainer.engine.distributed import (
    RankInfo,
    all_sum,
    bf16_supported,
    gather_to_first,
    init_process_group,
    precision_context,
)
from gallery_trainer.engine.job import (
    CHECKPOINT_DIR,
    METRICS_FILE,
    RESULT_FILE,
    WEIGHTS_FILE,
    RankError,
    RankJob,
    load_training_split,
)
from gallery_trainer.engine.metrics import MetricsWriter
from gallery_trainer.engine.optim import make_loss
from gallery_trainer.spec import config_hash

LATEST_FILE = "latest.json"
LOOP_FILE = "loop.json"


@dataclass
class LoopState:
    """Where training stands after `epoch` completed epochs; saved with every checkpoint."""

    epoch: int = 0
    step: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    samples: int = 0
    kept: dict[str, float] = field(default_factory=dict)
    """The epoch metrics of the weights that will be kept (the best epoch with early stopping, else the last)."""


def _make_backend(job: RankJob, info: RankInfo, precision: Any, steps_per_epoch: int) -> TrainingBackend:
    spec = job.spec
    torch.manual_seed(spec.training.seed)  # identical initial weights on every rank
    network = build_network(spec.model, job.transform, job.n_outputs, job.image_shape)
    loss_fn = make_loss(job.task)
    if spec.engine.kind == "deepspeed":
        from gallery_trainer.engine.deepspeed_engine import DeepSpeedBackend

        return DeepSpeedBackend(spec, network, loss_fn, info, precision, steps_per_epoch)
    from gallery_trainer.engine.ddp_engine import DDPBackend

    return DDPBackend(spec, network, loss_fn, info, precision, steps_per_epoch)


def _targets(job: RankJob, y: np.ndarray) -> np.ndarray:
    if job.task == "regression":
        return ((y.astype(np.float64) - job.target.mean) / job.target.scale).astype(np.float32)
    return y.astype(np.int64)


def evaluate(backend: TrainingBackend, chunks: list[EvalChunk], job: RankJob, device: torch.device) -> dict[str, float]:
    """Validation loss and accuracy (or RMSE in target units) over every rank's share."""
    loss_sum = correct = count = 0.0
    for chunk in chunks:
        outputs = backend.forward_eval(chunk.x, chunk.y)
        if outputs is None:
            continue
        out, y = outputs[: chunk.real], chunk.y[: chunk.real]
        if job.task == "classification":
            loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
            correct += float((out.argmax(dim=1) == y).sum())
        else:
            loss_sum += float(((out.squeeze(-1) - y) ** 2).sum())
        count += chunk.real
    loss_sum, correct, count = all_sum([loss_sum, correct, count], device)
    metrics = {"val_loss": loss_sum / count}
    if job.task == "classification":
        metrics["val_accuracy"] = correct / count
    else:
        metrics["val_rmse"] = math.sqrt(loss_sum / count) * job.target.scale
    return metrics


class Checkpoints:
    """Epoch checkpoints under `checkpoints/<tag>`: the engine's own state, the loop state and each
    rank's best weights; `latest.json` names the last complete one."""

    def __init__(self, job: RankJob, info: RankInfo, backend: TrainingBackend) -> None:
        self.root = job.workdir / CHECKPOINT_DIR
        self.info = info
        self.backend = backend
        self.fingerprint = {"config_hash": config_hash(job.spec), "world_size": info.world_size}

    def save(self, state: LoopState, best: dict[str, torch.Tensor] | None) -> None:
        tag = f"epoch-{state.epoch:05d}"
        self.backend.save_checkpoint(self.root, tag)
        (self.root / tag).mkdir(parents=True, exist_ok=True)
        if best is not None:
            save_file(best, str(self.root / tag / f"best-rank{self.info.rank}.safetensors"))
        dist.barrier()
        if self.info.rank == 0:
            (self.root / tag / LOOP_FILE).write_text(json.dumps({**self.fingerprint, "state": asdict(state)}))
            _write_atomically(self.root / LATEST_FILE, json.dumps({"tag": tag}))
            for old in self.root.iterdir():
                if old.is_dir() and old.name != tag:
                    shutil.rmtree(old, ignore_errors=True)
        dist.barrier()

    def restore(self) -> tuple[LoopState, dict[str, torch.Tensor] | None] | None:
        """The saved state, loaded into the engine; None when there is no checkpoint."""
        latest = self.root / LATEST_FILE
        if not latest.exists():
            return None
        tag = json.loads(latest.read_text())["tag"]
        saved = json.loads((self.root / tag / LOOP_FILE).read_text())
        for key, value in self.fingerprint.items():
            if saved.get(key) != value:
                raise RankError(f"resume: the checkpoint was made with a different {key.replace('_', ' ')}")
        self.backend.load_checkpoint(self.root, tag)
        best_file = self.root / tag / f"best-rank{self.info.rank}.safetensors"
        best = load_file(str(best_file)) if best_file.exists() else None
        return LoopState(**saved["state"]), best


def _write_atomically(path: Path, text: str) -> None:
    temp = path.with_suffix(".tmp")
    temp.write_text(text)
    temp.replace(path)


def train_rank(workdir: Path, *, resume: bool = False) -> None:
    """Run this rank's share of the job prepared in `workdir` (the process group is joined here)."""
    job = RankJob.load(workdir)
    spec, training = job.spec, job.spec.training
    info = init_process_group(spec.engine.backend, use_deepspeed=spec.engine.kind == "deepspeed")
    if info.world_size != spec.engine.ranks:
        raise RankError(
            f"engine.ranks: the launcher started {info.world_size} ranks but the spec asks for {spec.engine.ranks}"
        )
    notes = []
    precision = None
    if training.precision == "bf16":
        if bf16_supported(info.device):
            precision = precision_context("bf16", info.device)
        else:
            notes.append(f"bf16 autocast is not supported on {info.device.type}; trained in fp32")
    train, validation = load_training_split(workdir, "train"), load_training_split(workdir, "validation")
    dp_size = info.world_size // spec.engine.pipeline_stages
    step_examples = training.batch_size * training.gradient_accumulation * dp_size
    if len(train) < step_examples:
        raise RankError(
            f"training.batch_size: one optimizer step needs {step_examples} training examples (batch_size x "
            f"gradient_accumulation x {dp_size} data-parallel ranks) but the training split has {len(train)}"
        )
    backend = _make_backend(job, info, precision, len(train) // step_examples)
    torch.manual_seed(training.seed + 1 + info.rank)  # dropout masks differ between ranks
    shards = ShardedBatches(
        train.x,
        _targets(job, train.y),
        batch_size=training.batch_size,
        accumulation=training.gradient_accumulation,
        dp_rank=backend.dp_rank,
        dp_size=backend.dp_size,
        seed=training.seed,
    )
    chunks = eval_chunks(
        validation.x,
        _targets(job, validation.y),
        chunk_size=training.batch_size,
        dp_rank=backend.dp_rank,
        dp_size=backend.dp_size,
    )
    checkpoints = Checkpoints(job, info, backend)
    state, best = LoopState(), None
    if resume and (restored := checkpoints.restore()) is not None:
        state, best = restored
        notes.append(f"resumed after epoch {state.epoch}")
    writer = MetricsWriter(workdir / METRICS_FILE, enabled=info.rank == 0, keep_through_epoch=state.epoch)
    early = training.early_stopping
    epoch = state.epoch
    while epoch < training.epochs and not state.stopped_early:
        epoch += 1
        augmenter = Augmenter(
            spec.preparation.augmentation,
            image_shape=job.image_shape,
            feature_std=train.x.std(axis=0),
            n_classes=job.n_classes,
            seed=(training.seed * 1_000 + epoch) * 1_000 + backend.dp_rank,
        )
        losses = []
        epoch_start_seconds, epoch_start_samples = state.train_seconds, state.samples
        for micro in shards.epoch(epoch):
            if augmenter.active:
                micro = [augmenter(x, y) for x, y in micro]
            lr = backend.learning_rate()
            started = time.perf_counter()
            loss = backend.train_step(micro)
            elapsed = time.perf_counter() - started
            losses.append(loss)
            state.step += 1
            state.train_seconds += elapsed
            state.samples += shards.step_examples
            writer.step(state.step, epoch, train_loss=loss, lr=lr, samples_per_sec=shards.step_examples / elapsed)
        loss_sum, steps = all_sum([sum(losses), len(losses)], info.device)
        metrics = {
            "train_loss": loss_sum / steps,
            "lr": backend.learning_rate(),
            "samples_per_sec": (state.samples - epoch_start_samples)
            / max(state.train_seconds - epoch_start_seconds, 1e-9),
            **evaluate(backend, chunks, job, info.device),
        }
        writer.epoch(state.step, epoch, metrics)
        state.epoch = epoch
        if metrics["val_loss"] < state.best_val_loss - (early.min_delta if early else 0.0):
            state.best_val_loss, state.best_epoch, state.bad_epochs = metrics["val_loss"], epoch, 0
            if early:
                best = backend.local_state()
        else:
            state.bad_epochs += 1
        if not early or state.best_epoch == epoch:
            state.kept = metrics
        state.stopped_early = bool(early and state.bad_epochs >= early.patience)
        if spec.engine.checkpoint_epochs and (epoch % spec.engine.checkpoint_epochs == 0 or state.stopped_early):
            checkpoints.save(state, best)
    writer.close()
    final = best if (early and best is not None) else backend.local_state()
    parts = gather_to_first(final)
    if parts is not None:
        _write_outputs(job, parts, state, backend, info, notes)
    dist.barrier()


def _write_outputs(
    job: RankJob,
    parts: list[dict[str, torch.Tensor]],
    state: LoopState,
    backend: TrainingBackend,
    info: RankInfo,
    notes: list[str],
) -> None:
    weights: dict[str, torch.Tensor] = {}
    for part in parts:
        weights.update(part)
    weights["target.mean"] = torch.tensor(job.target.mean, dtype=torch.float32)
    weights["target.scale"] = torch.tensor(job.target.scale, dtype=torch.float32)
    save_file(weights, str(job.workdir / WEIGHTS_FILE))
    spec = job.spec
    result: dict[str, Any] = {
        "engine": backend.name,
        "world_size": info.world_size,
        "data_parallel": backend.dp_size,
        "pipeline_stages": spec.engine.pipeline_stages,
        "zero_stage": spec.engine.zero_stage if backend.name == "deepspeed" else None,
        "backend": info.backend,
        "precision": spec.training.precision if not any("bf16" in n for n in notes) else "fp32",
        "notes": notes,
        "epochs_run": state.epoch,
        "best_epoch": state.best_epoch,
        "stopped_early": state.stopped_early,
        "samples_per_sec": state.samples / max(state.train_seconds, 1e-9),
        "kept": state.kept,
    }
    (job.workdir / RESULT_FILE).write_text(json.dumps(result, indent=2))
