"""The lifecycle as far as it is built, on the embedded stack: train → model.trained → the gate
evaluates → model.validated → the optimizer builds and measures variants → model.optimized, with
one trace across the services."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from lifecycle_stack import LifecycleStack

from gallery_common.bus import EventBus
from gallery_common.events import CloudEvent
from gallery_common.nats_server import EmbeddedNats
from gallery_common.telemetry import trace_id_of

REPO = Path(__file__).resolve().parents[2]
GALLERY = Path(sys.executable).with_name("gallery")


@pytest.fixture
def stack(tmp_path: Path, nats_server: EmbeddedNats) -> Iterator[LifecycleStack]:
    running = LifecycleStack(home=tmp_path / "home", nats_url=nats_server.url)
    try:
        running.start("registry")
        running.start("trainer")
        running.start("optimizer")
        yield running
    finally:
        running.stop()


async def stored_events(nats_url: str) -> list[CloudEvent]:
    async with EventBus(nats_url, "e2e-test") as bus:
        events: list[CloudEvent] = []

        async def collect() -> None:
            async for event in bus.tail(deliver="all"):
                events.append(event)

        task = asyncio.create_task(collect())
        await asyncio.sleep(1.0)
        task.cancel()
        return events


def wait_for_optimized(stack: LifecycleStack, timeout: float = 240) -> list[CloudEvent]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = asyncio.run(stored_events(stack.nats_url))
        if any(e.event == "optimized" for e in events):
            return events
        time.sleep(1.0)
    pytest.fail(f"no model.optimized within {timeout}s")


def wait_for_status(registry: str, model: str, version: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.get(f"{registry}/api/v1/models/{model}/versions/{version}")
        if response.status_code == 200 and response.json()["status"] in {"validated", "rejected"}:
            return response.json()
        time.sleep(0.5)
    pytest.fail(f"{model}:{version} was not judged within {timeout}s")


@pytest.mark.slow
def test_a_trained_digits_model_is_validated_and_optimized(stack: LifecycleStack) -> None:
    env = stack.env()
    train = subprocess.run(
        [str(GALLERY), "train", str(REPO / "examples" / "digits.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert train.returncode == 0, train.stdout + train.stderr

    registry = stack.services["registry"].url
    version = wait_for_status(registry, "digits-mlp", 1)
    assert version["status"] == "validated", version.get("rejection_reasons")
    report = version["evaluation_report"]
    # the gate's own measurement on the held-out split, not the trainer's claim
    assert report["accuracy"] >= 0.9
    assert set(version["artifacts"]) >= {"onnx", "weights", "spec", "test_split", "curves"}

    events = wait_for_optimized(stack)
    kinds = [e.event for e in events]
    assert kinds.count("trained") == 1 and kinds.count("validated") == 1 and kinds.count("optimized") == 1
    by_kind = {e.event: e for e in events}
    trained, validated, optimized = by_kind["trained"], by_kind["validated"], by_kind["optimized"]
    assert validated.data.version == optimized.data.version == 1
    trace = trace_id_of(trained.traceparent)
    assert trace is not None
    assert trace_id_of(validated.traceparent) == trace_id_of(optimized.traceparent) == trace

    # the optimizer attached what it built to the version, and the recommended file is what it says
    attached = httpx.get(f"{registry}/api/v1/models/digits-mlp/versions/1").json()["artifacts"]
    assert {"int8", "fp16", "distilled", "edge_bundle", "report"} <= set(attached)
    recommended = optimized.data.recommended_artifact
    assert recommended.sha256 in {a["sha256"] for a in attached.values()}

    show = subprocess.run([str(GALLERY), "models", "show", "digits-mlp:1"], env=env, capture_output=True, text=True)
    assert show.returncode == 0, show.stderr
    assert "validated" in show.stdout
