"""Deployer: time from `model.validated` published to the first successful inference through the gateway.

Starts nats-server, the registry, the gateway and the deployer (local runtime) as `gallery up` does,
in a temp GALLERY_HOME, then five times: registers a new model's first version (a 64-256-256-10 MLP
ONNX file), publishes its `model.validated`, and polls the gateway with an inference request every
10 ms until one answers 200. The deployer must start a model server, wait for its warm-up, and route
it at the gateway in that time. Target: p50 at most 3 s.

    .venv/bin/python bench/deploy.py [--deploys 5]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson

from gallery_common.bus import EventBus
from gallery_common.events import ArtifactRef, ModelValidated
from gallery_common.nats_server import EmbeddedNats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
sys.path.insert(0, str(REPO / "bench"))
from lifecycle_stack import LifecycleStack  # noqa: E402
from serve import build_mlp  # noqa: E402

TARGET_S = 3.0


async def publish(nats_url: str, payload: ModelValidated) -> None:
    async with EventBus(nats_url, source="/bench/deploy") as bus:
        await bus.publish(payload, event_id=f"bench-validated-{payload.model}")


def one_deploy(stack: LifecycleStack, nats_url: str, model: str, onnx: Path) -> float:
    registry, gateway = stack.services["registry"].url, stack.services["gateway"].url
    data = onnx.read_bytes()
    target = stack.home / "artifacts" / model / "1" / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    ref = {"uri": target.as_uri(), "sha256": hashlib.sha256(data).hexdigest()}
    httpx.post(f"{registry}/api/v1/models", json={"name": model}).raise_for_status()
    httpx.post(f"{registry}/api/v1/models/{model}/versions", json={"artifacts": {"onnx": ref}}).raise_for_status()
    rows = np.zeros((1, 64), np.float32)
    body = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": rows[0].tolist()}]})
    payload = ModelValidated(model=model, version=1, artifacts={"onnx": ArtifactRef(**ref)})
    started = time.perf_counter()
    asyncio.run(publish(nats_url, payload))
    with httpx.Client(timeout=5) as client:
        while time.perf_counter() - started < 120:
            try:
                if client.post(f"{gateway}/v2/models/{model}/infer", content=body).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.01)
    raise RuntimeError(f"{model} answered nothing through the gateway within 120 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deploys", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gallery-bench-deploy-") as tmp:
        home = Path(tmp)
        onnx = home / "mlp.onnx"
        build_mlp(onnx)
        nats = EmbeddedNats(home / "nats", log_file=home / "nats.log").start()
        stack = LifecycleStack(home=home, nats_url=nats.url)
        try:
            for name in ("registry", "gateway", "deployer"):
                stack.start(name)
            times = []
            for i in range(1, args.deploys + 1):
                seconds = one_deploy(stack, nats.url, f"bench-{i}", onnx)
                times.append(seconds)
                print(f"deploy {i}: model.validated → first 200 through the gateway in {seconds:.2f} s", flush=True)
        finally:
            stack.stop()
            nats.stop()
    p50 = statistics.median(times)
    print(f"\np50 {p50:.2f} s, min {min(times):.2f} s, max {max(times):.2f} s over {len(times)} deploys")
    print(f"{'PASS' if p50 <= TARGET_S else 'MISS'}  p50 {p50:.2f} s (target <= {TARGET_S:g} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
