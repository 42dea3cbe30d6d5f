"""Trainer service: how fast it is ready, and what a tiny real job costs end to end.

Starts its own nats-server and the trainer as `gallery up` does (`python -m gallery_common.serve
trainer`, in a temp GALLERY_HOME), then measures:

- start-up: process launch to the first `/readyz` 200 (torch must not be imported to get there);
- one iris job (1 rank, 2 epochs): submit to succeeded (model.trained published), the run's
  training duration and peak RSS as the trainer recorded them;
- API latency: GET /api/v1/jobs/{id} while nothing trains (p50 / p99 of 200 calls).

    .venv/bin/python bench/trainer_service.py [--strict]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port

READY_TARGET_S = 5.0
JOB_TARGET_S = 90.0
GET_P99_TARGET_MS = 50.0

IRIS = {
    "name": "bench-iris",
    "data": {"source": "builtin", "name": "iris"},
    "model": {"hidden": [16]},
    "training": {"epochs": 2, "batch_size": 16, "learning_rate": 0.05},
    "engine": {"ranks": 1},
}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


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


def train_iris(client: httpx.Client) -> tuple[float, dict[str, Any], dict[str, Any]]:
    """Submit the iris job and wait for it; returns (seconds, job, run)."""
    submitted = time.perf_counter()
    job = client.post("/api/v1/jobs", json=IRIS).json()
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.1)
        job = client.get(f"/api/v1/jobs/{job['id']}").json()
    seconds = time.perf_counter() - submitted
    run = client.get(f"/api/v1/runs/{job['run_id']}").json() if job["run_id"] else {}
    return seconds, job, run


def get_latency_ms(client: httpx.Client, job_id: str, calls: int = 200) -> tuple[float, float]:
    timings = []
    for _ in range(calls):
        t0 = time.perf_counter()
        client.get(f"/api/v1/jobs/{job_id}").raise_for_status()
        timings.append((time.perf_counter() - t0) * 1000)
    return statistics.median(timings), statistics.quantiles(timings, n=100)[98]


def measure(client: httpx.Client, proc: subprocess.Popen[bytes], started: float) -> int:
    """Print every figure; returns the number of misses (-1 when the trainer could not be measured)."""
    ready_s = wait_ready(client, proc, started)
    if ready_s is None:
        print("the trainer did not become ready")
        return -1
    ok = ready_s < READY_TARGET_S
    print(f"start-up to /readyz: {ready_s:.2f} s (target < {READY_TARGET_S:g} s) {verdict(ok)}")
    misses = int(not ok)

    job_s, job, run = train_iris(client)
    if job["status"] != "succeeded":
        print(f"iris job {job['status']}: {job['error']}")
        return -1
    system, accuracy = run["system"], run["metrics"].get("test_accuracy", float("nan"))
    ok = job_s < JOB_TARGET_S
    print(f"iris job, submit to model.trained: {job_s:.1f} s (target < {JOB_TARGET_S:g} s) {verdict(ok)}")
    print(
        f"  training {system['duration_seconds']:.1f} s on {system['engine']}, "
        f"peak RSS {system['peak_rss_bytes'] / 2**20:.0f} MiB ({system['peak_rss_scope']}), "
        f"test accuracy {accuracy:.3f}"
    )
    misses += int(not ok)

    p50, p99 = get_latency_ms(client, job["id"])
    ok = p99 < GET_P99_TARGET_MS
    print(
        f"GET /api/v1/jobs/{{id}}: p50 {p50:.2f} ms, p99 {p99:.2f} ms "
        f"(target p99 < {GET_P99_TARGET_MS:g} ms) {verdict(ok)}"
    )
    return misses + int(not ok)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strict", action="store_true", help="exit 1 on any MISS")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp, EmbeddedNats(Path(tmp) / "nats") as nats:
        port = free_port()
        env = {**os.environ, "GALLERY_HOME": tmp, "GALLERY_NATS_URL": nats.url, "GALLERY_PORT": str(port)}
        log_path = Path(tmp) / "trainer.log"
        with open(log_path, "wb") as log:
            started = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "gallery_common.serve", "trainer"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
            try:
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                    misses = measure(client, proc, started)
            finally:
                proc.terminate()
                proc.wait(30)
        if misses < 0:
            print(log_path.read_text()[-3000:])
            return 1
    return 1 if misses and args.strict else 0


if __name__ == "__main__":
    raise SystemExit(main())
