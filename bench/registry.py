"""Registry REST latency and memory with 10,000 versions in its SQLite database.

Seeds a fresh SQLite registry (100 models x 100 versions, an artifact each, a `production` alias
per model), starts nats-server and the registry exactly as `gallery up` does (its own process,
`python -m gallery_common.serve registry`, the validation gate consuming), then measures over
HTTP keep-alive, one request at a time:

- create-version: POST /api/v1/models/{name}/versions with signature, metrics, two artifacts;
- get-by-alias:   GET  /api/v1/models/{name}/aliases/production (the version with its artifacts);
- the server's RSS (psutil) idle after start-up, and idle again after the load.

    .venv/bin/python bench/registry.py [--creates 500] [--gets 2000] [--strict]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil
import sqlalchemy as sa

from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port
from gallery_registry.store import open_registry
from gallery_registry.tables import AliasRow, ArtifactRow, ModelVersionRow, RegisteredModelRow, utcnow

MODELS, VERSIONS_PER_MODEL = 100, 100
CREATE_P50_TARGET_MS = 5.0
GET_P50_TARGET_MS = 2.0
RSS_TARGET_MB = 150.0
WARMUP = 50

Request = tuple[str, str, dict[str, Any] | None]  # method, path, JSON body

SIGNATURE: dict[str, Any] = {
    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
}


def seed(url: str) -> None:
    """10,000 versions in one transaction, the way the store writes them (rows, not REST)."""
    store = open_registry(url)
    now = utcnow()
    with store.engine.begin() as conn:
        for m in range(MODELS):
            model_id = conn.execute(
                sa.insert(RegisteredModelRow).values(
                    name=f"model-{m:03d}",
                    owner="bench",
                    last_version=VERSIONS_PER_MODEL,
                    last_semver=f"1.{VERSIONS_PER_MODEL - 1}.0",
                    created_at=now,
                    updated_at=now,
                )
            ).inserted_primary_key[0]
            rows = [
                {
                    "model_id": model_id,
                    "version": v + 1,
                    "semver": f"1.{v}.0",
                    "status": "validated",
                    "signature": SIGNATURE,
                    "metrics": {"accuracy": 0.9 + v / 10_000},
                    "run_id": f"run-{m}-{v}",
                    "created_at": now,
                    "updated_at": now,
                }
                for v in range(VERSIONS_PER_MODEL)
            ]
            conn.execute(sa.insert(ModelVersionRow), rows)
            ids = conn.execute(
                sa.select(ModelVersionRow.id).where(ModelVersionRow.model_id == model_id)  # type: ignore[arg-type]
            ).scalars()
            version_ids = list(ids)
            conn.execute(
                sa.insert(ArtifactRow),
                [
                    {
                        "version_id": vid,
                        "role": "onnx",
                        "uri": f"file:///bench/{vid}.onnx",
                        "sha256": "a" * 64,
                        "size": 1024,
                        "format": "onnx",
                        "created_at": now,
                    }
                    for vid in version_ids
                ],
            )
            conn.execute(
                sa.insert(AliasRow).values(
                    model_id=model_id,
                    alias="production",
                    version_id=max(version_ids),
                    updated_at=now,
                    updated_by="bench",
                )
            )
    store.engine.dispose()


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(client: httpx.Client, requests: Sequence[Request]) -> tuple[list[float], float]:
    """Per-request latencies (ms) and the wall time of the whole run (s)."""
    latencies = []
    start = time.perf_counter()
    for method, path, body in requests:
        t0 = time.perf_counter()
        response = client.request(method, path, json=body)
        latencies.append((time.perf_counter() - t0) * 1000)
        if response.status_code >= 300:
            raise SystemExit(f"{method} {path} answered {response.status_code}: {response.text}")
    return latencies, time.perf_counter() - start


def create_requests(n: int) -> list[Request]:
    return [
        (
            "POST",
            f"/api/v1/models/model-{i % MODELS:03d}/versions",
            {
                "signature": SIGNATURE,
                "metrics": {"accuracy": 0.95, "f1": 0.94},
                "run_id": f"bench-{i}",
                "artifacts": {
                    "onnx": {"uri": f"file:///bench/new-{i}.onnx", "sha256": "b" * 64, "size": 2048},
                    "weights": {"uri": f"file:///bench/new-{i}.safetensors", "sha256": "c" * 64},
                },
            },
        )
        for i in range(n)
    ]


def settle_rss(proc: psutil.Process, seconds: float = 2.0) -> float:
    time.sleep(seconds)
    return float(proc.memory_info().rss) / 2**20


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--creates", type=int, default=500, help="versions created in the timed run")
    parser.add_argument("--gets", type=int, default=2000, help="name@alias resolutions in the timed run")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
        home = Path(tmp)
        db_url = f"sqlite:///{home / 'registry.db'}"
        t0 = time.perf_counter()
        seed(db_url)
        seed_s = time.perf_counter() - t0
        with EmbeddedNats(home / "nats") as nats:
            port = free_port()
            env = {
                **os.environ,
                "GALLERY_HOME": str(home),
                "GALLERY_PORT": str(port),
                "GALLERY_NATS_URL": nats.url,
                "GALLERY_LOG_LEVEL": "WARNING",
            }
            env.pop("GALLERY_API_TOKENS", None)
            env.pop("GALLERY_DATABASE_URL", None)
            server = subprocess.Popen(
                [sys.executable, "-m", "gallery_common.serve", "registry"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(home / "registry.log", "wb"),  # noqa: SIM115
            )
            try:
                base = f"http://127.0.0.1:{port}"
                deadline = time.monotonic() + 60
                with httpx.Client(base_url=base, timeout=30) as client:
                    while True:
                        try:
                            if client.get("/readyz").status_code == 200:
                                break
                        except httpx.TransportError:
                            pass
                        if server.poll() is not None or time.monotonic() > deadline:
                            raise SystemExit(f"the registry did not start:\n{(home / 'registry.log').read_text()}")
                        time.sleep(0.1)
                    proc = psutil.Process(server.pid)
                    rss_start = settle_rss(proc)

                    timed(client, create_requests(WARMUP))
                    gets = [
                        ("GET", f"/api/v1/models/model-{i % MODELS:03d}/aliases/production", None)
                        for i in range(args.gets)
                    ]
                    timed(client, gets[:WARMUP])
                    create_ms, create_s = timed(client, create_requests(args.creates))
                    get_ms, get_s = timed(client, gets)
                    total = client.get("/api/v1/models/model-000").json()["latest_version"]
                rss_after = settle_rss(proc)
            finally:
                server.terminate()
                server.wait(30)

    versions = MODELS * VERSIONS_PER_MODEL
    print(
        f"SQLite under {tempfile.gettempdir()}; {versions:,} versions seeded in {seed_s:.1f} s; {os.cpu_count()} CPUs"
    )
    print("server: python -m gallery_common.serve registry (uvicorn, uvloop, httptools, gate consuming)")
    print(f"model-000 now at version {total}")
    print()
    print(f"{'':16}{'n':>7}{'p50 ms':>9}{'p99 ms':>9}{'ops/s':>9}")
    for label, samples, wall in (("create-version", create_ms, create_s), ("get-by-alias", get_ms, get_s)):
        print(
            f"{label:16}{len(samples):>7}{percentile(samples, 0.5):>9.2f}{percentile(samples, 0.99):>9.2f}"
            f"{len(samples) / wall:>9.0f}"
        )
    print(f"idle RSS after start-up {rss_start:.0f} MB, after the load {rss_after:.0f} MB")
    print()
    create_ok = percentile(create_ms, 0.5) <= CREATE_P50_TARGET_MS
    get_ok = percentile(get_ms, 0.5) <= GET_P50_TARGET_MS
    rss = max(rss_start, rss_after)
    rss_ok = rss <= RSS_TARGET_MB
    create_p50 = percentile(create_ms, 0.5)
    print(f"{verdict(create_ok)}  create-version p50 {create_p50:.2f} ms (target <= {CREATE_P50_TARGET_MS} ms)")
    print(f"{verdict(get_ok)}  get-by-alias p50 {percentile(get_ms, 0.5):.2f} ms (target <= {GET_P50_TARGET_MS} ms)")
    print(f"{verdict(rss_ok)}  idle RSS {rss:.0f} MB (target <= {RSS_TARGET_MB:.0f} MB)")
    return 1 if args.strict and not (create_ok and get_ok and rss_ok) else 0


if __name__ == "__main__":
    sys.exit(main())
