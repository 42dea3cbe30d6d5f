"""Training throughput: a plain PyTorch loop vs DeepSpeed with 1 rank vs DeepSpeed with 2 ranks.

Same model (digits MLP 64 -> 256 -> 256 -> 10 with standardisation in the graph), same data, same
global batch (32 unless --batch says otherwise), optimiser and learning-rate schedule. Samples per
second count optimizer-step time only (forward, backward, step; not evaluation or start-up) in every
case. The machine may be shared, so besides the mean over the run the median step is reported (a
burst of other work moves the mean, rarely the median); the verdict uses the median.
Target: DeepSpeed's single-rank overhead over the plain loop is at most 15 %.

Run: .venv/bin/python bench/train.py [--epochs N] [--batch B]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gallery_common.nn import build_network
from gallery_trainer.engine.batches import ShardedBatches
from gallery_trainer.engine.job import METRICS_FILE, SPLIT_FILES, load_split
from gallery_trainer.engine.optim import make_optimizer, make_scheduler
from gallery_trainer.pipeline import prepare_job, run_job
from gallery_trainer.spec import JobSpec, parse_spec

OVERHEAD_TARGET = 0.15
DEFAULT_BATCH = 32


def job_spec(epochs: int, ranks: int, batch: int) -> JobSpec:
    return parse_spec(
        {
            "name": "bench-digits",
            "data": {"source": "builtin", "name": "digits"},
            "model": {"hidden": [256, 256]},
            "training": {"epochs": epochs, "batch_size": batch // ranks, "learning_rate": 1e-3},
            "engine": {"kind": "deepspeed", "ranks": ranks, "checkpoint_epochs": 0},
        }
    )


def plain_loop(spec: JobSpec, workdir: Path) -> tuple[float, float]:
    """(mean, median-step) samples per second of a hand-written PyTorch loop over the same data."""
    prepared = prepare_job(spec, workdir)
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    train = load_split(workdir / SPLIT_FILES["train"])
    model = build_network(spec.model, prepared.job.transform, 10, None)
    optimizer = make_optimizer(model.parameters(), spec.training)
    batch = spec.training.batch_size
    batches = ShardedBatches(train.x, train.y, batch_size=batch, accumulation=1, dp_rank=0, dp_size=1, seed=0)
    # the job's learning-rate schedule runs in every engine, so the plain loop runs it too
    scheduler = make_scheduler(optimizer, spec.training, batches.steps_per_epoch)
    step_seconds = []
    for epoch in range(1, spec.training.epochs + 1):
        for ((x, y),) in batches.epoch(epoch):
            started = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            float(loss.detach())
            step_seconds.append(time.perf_counter() - started)
    return batch * len(step_seconds) / sum(step_seconds), batch / statistics.median(step_seconds)


def deepspeed_run(spec: JobSpec, workdir: Path) -> tuple[float, float]:
    """(mean, median-step) samples per second of a real run_job through the DeepSpeed launcher."""
    outputs = run_job(spec, workdir)
    lines = [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]
    per_step = [line["samples_per_sec"] for line in lines if line["kind"] == "step"]
    return outputs.metrics["samples_per_sec"], statistics.median(per_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="global batch (even: 2 ranks split it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = Path(tmp)
        figures = {"plain PyTorch loop": plain_loop(job_spec(args.epochs, 1, args.batch), root / "plain")}
        for ranks in (1, 2):
            name = f"DeepSpeed, {ranks} rank{'s' if ranks > 1 else ''}"
            figures[name] = deepspeed_run(job_spec(args.epochs, ranks, args.batch), root / f"deepspeed-{ranks}")
    plain_median = figures["plain PyTorch loop"][1]
    print(f"digits MLP 64-256-256-10, global batch {args.batch}, {args.epochs} epochs, {os.cpu_count()} CPU cores")
    print(f"  {'':<22} {'mean':>10} {'median step':>12}  samples/s    (median vs plain)")
    for name, (mean, median) in figures.items():
        print(f"  {name:<22} {mean:>10,.0f} {median:>12,.0f}               ({median / plain_median:.2f}x)")
    single = figures["DeepSpeed, 1 rank"][1]
    print(f"  DeepSpeed 2 ranks / 1 rank (median): {figures['DeepSpeed, 2 ranks'][1] / single:.2f}x")
    overhead = plain_median / single - 1
    verdict = "PASS" if overhead <= OVERHEAD_TARGET else "MISS"
    print(f"{verdict}: DeepSpeed single-rank overhead {overhead:+.1%} (median step; target <= {OVERHEAD_TARGET:.0%})")


if __name__ == "__main__":
    main()
