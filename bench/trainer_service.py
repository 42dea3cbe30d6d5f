"""Trainer service: how fast it is ready, and what a training job costs from submit to `model.trained`.

Starts its own nats-server and the trainer as `gallery up` does (`python -m gallery_common.serve
trainer`, in a temp GALLERY_HOME) with a new, empty TORCH_EXTENSIONS_DIR (nothing compiled: a fresh
installation that skipped `make install`'s build of DeepSpeed's CPU op), then measures:

- start-up: process launch to the first `/readyz` 200 (torch must not be imported to get there);
- digits jobs (MLP 64-256-256-10, 5 epochs), submit to succeeded (set once `model.trained` is
  published and acknowledged): 1 rank fresh (the trainer's first job) and warm (its second, submitted
  once the trainer's standby ranks are ready, as between two jobs of a person), and
  2 data-parallel ranks and 2 pipeline stages, fresh (the first multi-rank job compiles the op) and
  warm. The peer beside each is the job's own training (first step to last epoch, from its
  metrics.jsonl): the ratio is what the job costs per second of training;
- CPU seconds per job: the trainer's and its ranks' (reaped children's) CPU time over the job, the
  figure a loaded machine changes least;
- each job's phases, from the job's phase as the API reports it (polled every 20 ms) and its metrics;
- API latency: GET /api/v1/jobs/{id} while nothing trains (p50 / p99 of 200 calls);
- the ranks' start side by side with their peer, the launcher chain the trainer used before (`deepspeed
  --num_gpus N --module gallery_trainer.rank`: the launcher, its per-node launch, then the ranks) against
  the trainer's own start (`gallery_trainer.launcher.run_ranks`), alternating on one prepared digits
  workdir: wall seconds and CPU seconds of every process (median of --repeats), and the ratio.

    .venv/bin/python bench/trainer_service.py [--strict]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port
from gallery_trainer.launcher import deepspeed_launcher, rank_environment, remove_shared_buffers, run_ranks
from gallery_trainer.pipeline import prepare_job
from gallery_trainer.spec import parse_spec

READY_TARGET_S = 5.0
WARM_TARGET_S = 8.0
FRESH_TARGET_S = 30.0
GET_P99_TARGET_MS = 50.0
POLL_S = 0.02


def digits(name: str, **engine: Any) -> dict[str, Any]:
    return {
        "name": name,
        "data": {"source": "builtin", "name": "digits"},
        "model": {"hidden": [256, 256]},
        "training": {"epochs": 5, "batch_size": 32, "learning_rate": 1e-3},
        "engine": {"checkpoint_epochs": 0, **engine},
    }


# (label, spec, target): in this order on one trainer, so "fresh" is the first job of its kind
JOBS = [
    ("digits, 1 rank, fresh", digits("bench-digits"), FRESH_TARGET_S),
    ("digits, 1 rank, warm", digits("bench-digits"), WARM_TARGET_S),
    ("2-rank data parallel, fresh (compiles the op)", digits("bench-dp", ranks=2), FRESH_TARGET_S),
    ("2-rank data parallel, warm", digits("bench-dp", ranks=2), WARM_TARGET_S),
    ("2-stage pipeline, warm", digits("bench-pp", ranks=2, pipeline_stages=2), WARM_TARGET_S),
]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


@dataclass
class JobTiming:
    seconds: float
    job: dict[str, Any]
    phases: dict[str, float] = field(default_factory=dict)  # phase -> seconds after submit it was first seen


def wait_ready(client: httpx.Client, proc: subprocess.Popen[bytes], started: float) -> float | None:
    """Seconds from launch to the first /readyz 200, or None if the trainer died or took a minute."""
    while True:
        try:
            if client.get("/readyz").status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.perf_counter() - started > 60:
            return None
        time.sleep(0.02)


def run_job(client: httpx.Client, spec: dict[str, Any]) -> JobTiming:
    """Submit `spec` and follow it to its end."""
    submitted = time.perf_counter()
    job = client.post("/api/v1/jobs", json=spec).json()
    timing = JobTiming(0.0, job)
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(POLL_S)
        job = client.get(f"/api/v1/jobs/{job['id']}").json()
        timing.phases.setdefault(job["phase"] or job["status"], time.perf_counter() - submitted)
    timing.seconds, timing.job = time.perf_counter() - submitted, job
    return timing


def training_window(workdir: Path) -> tuple[float, float]:
    """(first step, last metrics line) as wall-clock times, from the job's metrics.jsonl."""
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return lines[0]["time"], lines[-1]["time"]


def describe(timing: JobTiming, workdir: Path, submitted_wall: float) -> tuple[float, str]:
    """The job's training seconds and one line of its phases."""
    first, last = training_window(workdir)
    training = last - first
    marks = timing.phases
    start = marks.get("training", 0.0)
    steps = [
        ("pickup+prep", start),
        ("process+imports+init", first - submitted_wall - start),
        ("training", training),
        ("exit+export", marks.get("uploading", timing.seconds) - (last - submitted_wall)),
        ("upload+publish", timing.seconds - marks.get("uploading", timing.seconds)),
    ]
    return training, " · ".join(f"{name} {seconds:.1f}" for name, seconds in steps)


def cpu_seconds(process: psutil.Process) -> float:
    """CPU time of `process` and of the children it has reaped (a job's ranks, once it ends)."""
    times = process.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def get_latency_ms(client: httpx.Client, job_id: str, calls: int = 200) -> tuple[float, float]:
    timings = []
    for _ in range(calls):
        t0 = time.perf_counter()
        client.get(f"/api/v1/jobs/{job_id}").raise_for_status()
        timings.append((time.perf_counter() - t0) * 1000)
    return statistics.median(timings), statistics.quantiles(timings, n=100)[98]


def measure(client: httpx.Client, proc: subprocess.Popen[bytes], started: float, jobs_dir: Path) -> int:
    """Print every figure; returns the number of misses (-1 when the trainer could not be measured)."""
    ready_s = wait_ready(client, proc, started)
    if ready_s is None:
        print("the trainer did not become ready")
        return -1
    ok = ready_s < READY_TARGET_S
    print(f"start-up to /readyz: {ready_s:.2f} s (target < {READY_TARGET_S:g} s) {verdict(ok)}")
    misses = int(not ok)

    print("submit -> model.trained; peer: the job's own training (first step to last epoch); phases in s")
    trainer = psutil.Process(proc.pid)
    last_id = ""
    for label, spec, target in JOBS:
        if "warm" in label:
            waited = wait_standby(client, spec["engine"].get("ranks", 1))
            print(f"  (waited {waited:.1f} s for the trainer's standby ranks to be ready)")
        submitted_wall = time.time()
        cpu_before = cpu_seconds(trainer)
        timing = run_job(client, spec)
        cpu = cpu_seconds(trainer) - cpu_before
        job = timing.job
        if job["status"] != "succeeded":
            print(f"{label}: {job['status']}: {job['error']}")
            return -1
        training, phases = describe(timing, jobs_dir / job["id"], submitted_wall)
        ok = timing.seconds <= target
        print(
            f"  {label}: {timing.seconds:.1f} s (target <= {target:g} s) {verdict(ok)}; "
            f"training {training:.1f} s, ratio {timing.seconds / training:.1f}x; CPU {cpu:.1f} s"
        )
        print(f"      {phases}")
        misses += int(not ok)
        last_id = job["id"]

    p50, p99 = get_latency_ms(client, last_id)
    ok = p99 < GET_P99_TARGET_MS
    print(
        f"GET /api/v1/jobs/{{id}}: p50 {p50:.2f} ms, p99 {p99:.2f} ms "
        f"(target p99 < {GET_P99_TARGET_MS:g} ms) {verdict(ok)}"
    )
    return misses + int(not ok)


def wait_standby(client: httpx.Client, ranks: int, timeout: float = 60.0) -> float:
    """Seconds until the trainer holds `ranks` standby ranks (a warm trainer between two jobs): jobs
    submitted back to back find the pool still importing torch, and pay what is left of that."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        for line in client.get("/metrics").text.splitlines():
            name, _, value = line.partition(" ")
            if name.endswith("trainer_standby_rank_processes") and float(value) >= ranks:
                return time.perf_counter() - started
        time.sleep(0.1)
    return time.perf_counter() - started


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def start_side_by_side(root: Path, repeats: int) -> None:
    """The ranks of a prepared job started through DeepSpeed's launcher chain and by the trainer, alternating."""
    print("rank start, launcher chain (peer) vs the trainer's own (ours): median wall s / CPU s of all processes")
    for label, spec_doc in (
        ("1 rank", digits("side-1")),
        ("2-rank data parallel", digits("side-dp", ranks=2)),
        ("2-stage pipeline", digits("side-pp", ranks=2, pipeline_stages=2)),
    ):
        spec = parse_spec(spec_doc)
        prepared = root / f"prepared-{spec.name}"
        prepare_job(spec, prepared)
        figures: dict[str, list[tuple[float, float]]] = {"peer": [], "ours": []}
        for i in range(repeats):
            for who in ("peer", "ours"):
                workdir = root / f"{spec.name}-{who}-{i}"
                shutil.copytree(prepared, workdir)
                port = free_port()
                wall, cpu = time.perf_counter(), children_cpu()
                if who == "ours":
                    run_ranks(spec, workdir, port)
                else:
                    command = [*deepspeed_launcher(), "--master_port", str(port), "--num_gpus", str(spec.engine.ranks)]
                    command += ["--module", "gallery_trainer.rank", "--workdir", str(workdir)]
                    with open(workdir / "train.log", "ab") as log:
                        subprocess.run(
                            command, cwd=workdir, env=rank_environment(spec, port), stdout=log, stderr=log, check=True
                        )
                    remove_shared_buffers(port)
                figures[who].append((time.perf_counter() - wall, children_cpu() - cpu))
        peer_wall, peer_cpu = (statistics.median(f[k] for f in figures["peer"]) for k in (0, 1))
        our_wall, our_cpu = (statistics.median(f[k] for f in figures["ours"]) for k in (0, 1))
        spread = max(f[0] for f in figures["ours"]) - min(f[0] for f in figures["ours"])
        print(
            f"  {label}: peer {peer_wall:.1f} s / {peer_cpu:.1f} s CPU, ours {our_wall:.1f} s / {our_cpu:.1f} s CPU "
            f"(ours {our_wall / peer_wall:.2f}x wall, {our_cpu / peer_cpu:.2f}x CPU; our wall spread {spread:.1f} s)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strict", action="store_true", help="exit 1 on any MISS")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side in the side-by-side start")
    parser.add_argument("--only-start", action="store_true", help="measure only the side-by-side start")
    args = parser.parse_args()
    if args.only_start:
        with tempfile.TemporaryDirectory(prefix="bench-ranks-") as tmp:
            start_side_by_side(Path(tmp), args.repeats)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp, EmbeddedNats(Path(tmp) / "nats") as nats:
        port = free_port()
        env = {
            **os.environ,
            "GALLERY_HOME": tmp,
            "GALLERY_NATS_URL": nats.url,
            "GALLERY_PORT": str(port),
            "TORCH_EXTENSIONS_DIR": str(Path(tmp) / "torch_extensions"),
        }
        log_path = Path(tmp) / "trainer.log"
        with open(log_path, "wb") as log:
            started = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "gallery_common.serve", "trainer"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
            try:
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                    misses = measure(client, proc, started, Path(tmp) / "trainer" / "jobs")
            finally:
                proc.terminate()
                proc.wait(30)
        if misses < 0:
            print(log_path.read_text()[-3000:])
            return 1
        start_side_by_side(Path(tmp), args.repeats)
    return 1 if misses and args.strict else 0


if __name__ == "__main__":
    raise SystemExit(main())
