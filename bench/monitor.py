"""Monitor: how fast sampled requests are ingested, what a scrape costs, and whether sampling delays the gateway.

1. In-process ingest: `SampleBook.ingest` on gateway-shaped samples (64 FP32 features, 10 logits).
2. Through NATS: the monitor service as its own process pinned to one core; N samples published on
   `inference.sample.<model>` as the gateway publishes them; processed/s is read off the monitor's
   `modelgallery_monitor_samples_total`, and every sample must arrive (none dropped).
3. Scrape cost: fetch + parse of a real model server's `/metrics` (after some traffic), per target.
4. The gateway in front of the same model server with sampling at 100 % and at 0 % (both running,
   requests alternated between them so machine noise hits both): latency p50 / p99.

Target: at least 5,000 samples/s ingested through NATS on one core, with no sample lost.

    .venv/bin/python bench/monitor.py [--samples 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import nats
import numpy as np
import orjson
from prometheus_client.parser import text_string_to_metric_families

from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port
from gallery_monitor.samples import SampleBook
from gallery_monitor.scraper import Scraper, Target
from gallery_monitor.series import SeriesBook

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from serve import build_mlp  # noqa: E402

TARGET_SAMPLES_PER_S = 5000.0
MODEL = "mlp"
WARM_UP = 200


def messages(count: int) -> list[bytes]:
    """Samples as the gateway publishes them: one 64-feature row and its 10 logits each."""
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(count, 64)).astype(np.float32)
    logits = rng.normal(size=(count, 10)).astype(np.float32)
    return [
        orjson.dumps(
            {
                "model": MODEL,
                "version": "1",
                "variant": "fp32",
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": rows[i].tolist()}],
                "outputs": [{"name": "output", "datatype": "FP32", "shape": [1, 10], "data": logits[i].tolist()}],
                "latency_ms": 1.0,
                "time": time.time(),
            }
        )
        for i in range(count)
    ]


def raw_ingest_rate(batch: list[bytes]) -> float:
    book = SampleBook(capacity=20_000)
    started = time.perf_counter()
    for message in batch:
        book.ingest(message, started)
    return len(batch) / (time.perf_counter() - started)


@contextmanager
def service(name: str, home: Path, cpu: int | None = None, **settings: str) -> Iterator[str]:
    """`python -m gallery_common.serve NAME` on a free port (pinned to `cpu` when given); yields its URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALLERY_")}
    env.update(GALLERY_HOME=str(home), GALLERY_PORT=str(port), GALLERY_SERVICE_NAME=name, **settings)
    log = home / f"{name}-{port}.log"
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gallery_common.serve", name], env=env, stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=pin,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {log.read_text()[-2000:]}")
            with suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(20)


@contextmanager
def model_server(home: Path, onnx: Path) -> Iterator[str]:
    data = onnx.read_bytes()
    target = home / "artifacts" / MODEL / "1" / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    port = free_port()
    command = [
        sys.executable, "-m", "gallery_deployer.modelserver", "--model", MODEL, "--version", "1",
        "--artifact", target.as_uri(), "--sha256", hashlib.sha256(data).hexdigest(), "--port", str(port),
    ]  # fmt: skip
    env = {**os.environ, "GALLERY_HOME": str(home), "GALLERY_API_TOKENS": ""}
    with (home / "modelserver.log").open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"model server did not start: {(home / 'modelserver.log').read_text()[-2000:]}")
            with suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(20)


def accepted_samples(monitor: str) -> float:
    text = httpx.get(f"{monitor}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        if family.name == "modelgallery_monitor_samples":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("outcome") == "accepted":
                    return sample.value
    return 0.0


def nats_ingest(nats_url: str, monitor: str, batch: list[bytes]) -> tuple[float, int]:
    """Publish every sample as fast as the client can; (processed per second, samples processed)."""
    before = accepted_samples(monitor)

    async def publish() -> None:
        nc = await nats.connect(nats_url)
        try:
            for message in batch:
                await nc.publish(f"inference.sample.{MODEL}", message)
            await nc.flush()
        finally:
            await nc.close()

    started = time.perf_counter()
    asyncio.run(publish())
    processed, last_change, finished = 0.0, time.perf_counter(), started
    while time.perf_counter() - last_change < 2.0 and processed < len(batch):
        now = accepted_samples(monitor) - before
        if now > processed:
            processed, last_change, finished = now, time.perf_counter(), time.perf_counter()
        time.sleep(0.05)
    return processed / (finished - started), int(processed)


def scrape_cost(server: str, scrapes: int = 200) -> tuple[float, float, int]:
    """(mean ms, p99 ms, bytes) of fetching and parsing the model server's /metrics, as the monitor does."""

    async def go() -> tuple[list[float], int]:
        async with httpx.AsyncClient() as client:
            scraper = Scraper(SeriesBook(900, 5), client, interval_s=5, timeout_s=5)
            target = Target(server, "model_server")
            size = len((await client.get(f"{server}/metrics")).content)
            times = []
            for _ in range(scrapes):
                started = time.perf_counter()
                assert await scraper.scrape(target) is not None
                times.append((time.perf_counter() - started) * 1000)
            return times, size

    times, size = asyncio.run(go())
    return statistics.fmean(times), float(np.percentile(times, 99)), size


def infer_body() -> bytes:
    row = np.random.default_rng(1).normal(size=64).astype(np.float32)
    return orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": row.tolist()}]})


def gateway_latency(sampled: str, unsampled: str, server: str, requests: int) -> dict[str, list[float]]:
    """Latency in ms through each gateway, requests alternated between them."""
    route = {"backends": [{"id": "ms1", "url": server, "version": "1", "variant": "fp32"}]}
    for gateway in (sampled, unsampled):
        httpx.put(f"{gateway}/admin/routes/{MODEL}", json=route).raise_for_status()
    body = infer_body()
    out: dict[str, list[float]] = {sampled: [], unsampled: []}
    with httpx.Client(timeout=10) as client:
        for i in range(requests + WARM_UP):
            for gateway in (sampled, unsampled) if i % 2 else (unsampled, sampled):
                started = time.perf_counter()
                response = client.post(f"{gateway}/v2/models/{MODEL}/infer", content=body)
                elapsed = (time.perf_counter() - started) * 1000
                response.raise_for_status()
                if i >= WARM_UP:  # the first requests warm connections and caches
                    out[gateway].append(elapsed)
    return out


def percentiles(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--requests", type=int, default=2000, help="requests per gateway")
    args = parser.parse_args()
    batch = messages(args.samples)
    cpus = sorted(os.sched_getaffinity(0))
    monitor_cpu = cpus[0]
    if len(cpus) > 1:
        os.sched_setaffinity(0, set(cpus[1:]))  # the publisher must not share the monitor's core

    print(f"in-process ingest:        {raw_ingest_rate(batch):10,.0f} samples/s (SampleBook.ingest, one thread)")
    with tempfile.TemporaryDirectory(prefix="gallery-bench-monitor-") as tmp:
        home = Path(tmp)
        onnx = home / "mlp.onnx"
        build_mlp(onnx)
        nats_server = EmbeddedNats(home / "nats", log_file=home / "nats.log").start()
        common = {"GALLERY_NATS_URL": nats_server.url, "GALLERY_API_TOKENS": ""}
        # nothing to scrape and no registry: the monitor spends its core on samples alone
        alone = {"GALLERY_DEPLOYER_URL": "", "GALLERY_GATEWAY_URL": "", "GALLERY_REGISTRY_URL": "http://127.0.0.1:9"}
        try:
            with (
                service("monitor", home, cpu=monitor_cpu, **common, **alone) as monitor,
                model_server(home, onnx) as server,
                service("gateway", home, GALLERY_SAMPLE_RATE="1.0", GALLERY_ROUTES_FILE=str(home / "on.json"),
                        **common) as sampled,
                service("gateway", home, GALLERY_SAMPLE_RATE="0.0", GALLERY_ROUTES_FILE=str(home / "off.json"),
                        **common) as unsampled,
            ):  # fmt: skip
                rate, processed = nats_ingest(nats_server.url, monitor, batch)
                lost = args.samples - processed
                print(f"through NATS:             {rate:10,.0f} samples/s (monitor pinned to CPU {monitor_cpu}; "
                      f"{processed:,} of {args.samples:,} processed, {lost:,} lost)")  # fmt: skip

                with httpx.Client() as client:
                    for _ in range(300):
                        client.post(f"{server}/v2/models/{MODEL}/infer", content=infer_body()).raise_for_status()
                mean_ms, p99_ms, size = scrape_cost(server)
                print(
                    f"scrape of a model server: mean {mean_ms:.2f} ms, p99 {p99_ms:.2f} ms per scrape ({size:,} bytes)"
                )

                before = accepted_samples(monitor)
                latencies = gateway_latency(sampled, unsampled, server, args.requests)
                time.sleep(1.0)
                seen = accepted_samples(monitor) - before
        finally:
            nats_server.stop()

    p50_on, p99_on = percentiles(latencies[sampled])
    p50_off, p99_off = percentiles(latencies[unsampled])
    print(f"gateway, sampling 100 %:  p50 {p50_on:.2f} ms, p99 {p99_on:.2f} ms")
    print(f"gateway, sampling   0 %:  p50 {p50_off:.2f} ms, p99 {p99_off:.2f} ms")
    print(f"samples the monitor received from the 100 % gateway: {seen:,.0f} of {args.requests + WARM_UP:,} requests")
    delayed = p50_on - p50_off
    ok_rate = rate >= TARGET_SAMPLES_PER_S and lost == 0
    ok_gateway = delayed <= max(0.3, 0.1 * p50_off)
    print(f"{'PASS' if ok_rate else 'MISS'}: {rate:,.0f} samples/s through NATS on one core, {lost} lost "
          f"(target >= {TARGET_SAMPLES_PER_S:,.0f}, none lost)")  # fmt: skip
    print(f"{'PASS' if ok_gateway else 'MISS'}: sampling every request moves the gateway's p50 by {delayed:+.2f} ms "
          f"(allowed: 0.3 ms or 10 %)")  # fmt: skip
    return 0 if ok_rate and ok_gateway else 1


if __name__ == "__main__":
    raise SystemExit(main())
