"""Two deployer processes on one database and one nats-server: one leads, the other stands by.

The follower refuses to act (503 naming the leader). The leader is SIGKILLed while it handles a
`model.validated` (its model server is starting); the follower takes over within 10 s, gets the
event back from JetStream and finishes the rollout: one `model.deployed` for the version, served
through the gateway.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import numpy as np
import orjson
import pytest
from deployer_stack import classifier, infer_body, put, validation_split
from lifecycle_stack import LifecycleStack
from waiting import wait_for

from gallery_common.bus import EventBus
from gallery_common.events import ArtifactRef, ModelValidated
from gallery_common.nats_server import EmbeddedNats

TAKEOVER_BOUND_S = 10.0
LEADER = {"GALLERY_LEADER_TTL_S": "3", "GALLERY_READY_TIMEOUT_S": "60"}
ROWS = np.random.default_rng(5).normal(size=(50, 4)).astype(np.float32)


@pytest.fixture
def stack(tmp_path: Path, nats_server: EmbeddedNats) -> Iterator[LifecycleStack]:
    running = LifecycleStack(home=tmp_path, nats_url=nats_server.url)
    try:
        running.start("registry")
        running.start("gateway", GALLERY_SAMPLE_RATE="0")
        yield running
    finally:
        running.stop()


@pytest.fixture
async def lifecycle_events(nats_server: EmbeddedNats) -> AsyncIterator[list[tuple[str, dict[str, Any]]]]:
    """Every lifecycle message published, duplicates included (a core subscription sees each publish)."""
    seen: list[tuple[str, dict[str, Any]]] = []
    nc = await nats.connect(nats_server.url)

    async def on_message(msg: Any) -> None:
        seen.append((msg.subject, orjson.loads(msg.data)))

    await nc.subscribe("model.>", cb=on_message)
    yield seen
    await nc.close()


def leader_of(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/leader", timeout=5).json()  # type: ignore[no-any-return]


def register_validated(registry: str, home: Path) -> dict[str, ArtifactRef]:
    artifacts = {
        "onnx": put(home, "iris/1/model.onnx", classifier(np.eye(4, 3))),
        "validation_split": validation_split(home, ROWS),
    }
    assert httpx.post(f"{registry}/api/v1/models", json={"name": "iris"}).status_code == 201
    created = httpx.post(f"{registry}/api/v1/models/iris/versions", json={"artifacts": artifacts})
    assert created.status_code == 201, created.text
    for status in ("validating", "validated"):
        marked = httpx.patch(f"{registry}/api/v1/models/iris/versions/1", json={"status": status})
        assert marked.status_code == 200, marked.text
    return {k: ArtifactRef(**v) for k, v in artifacts.items()}


async def test_the_leader_killed_mid_rollout_the_follower_takes_over_and_deploys_once(
    stack: LifecycleStack, nats_server: EmbeddedNats, lifecycle_events: list[tuple[str, dict[str, Any]]]
) -> None:
    a = stack.start("deployer", **LEADER)
    first_term = wait_for("the first deployer to lead", lambda: (s := leader_of(a.url))["leader"] and s["term"], 20)
    b = stack.start("deployer", replica="-b", **LEADER)
    follower = wait_for("the second to see the leader", lambda: (s := leader_of(b.url))["holder"] and s, 20)
    assert not follower["leader"] and follower["holder_url"] == a.url
    refused = httpx.post(f"{b.url}/api/v1/deployments", json={"model": "iris", "version": 1})
    assert refused.status_code == 503
    assert refused.json()["error"].endswith(f"the leader is {follower['holder']} at {a.url}")
    assert httpx.get(f"{b.url}/api/v1/deployments").status_code == 200  # reads answer on a follower

    artifacts = register_validated(stack.services["registry"].url, stack.home)
    async with EventBus(nats_server.url, source="/tests/registry") as bus:
        await bus.publish(ModelValidated(model="iris", version=1, artifacts=artifacts), event_id="validated-iris-1")

    # the leader is mid-rollout once its model server has started
    replica_logs = stack.home / "deployer" / "logs" / "iris-v1"
    await asyncio.to_thread(
        wait_for, "the leader starting a model server", lambda: any(replica_logs.glob("*")), 30, 0.02
    )
    os.kill(a.process.pid, signal.SIGKILL)
    killed = time.monotonic()
    await asyncio.to_thread(wait_for, "the follower to lead", lambda: leader_of(b.url)["leader"], 20, 0.05)
    takeover_s = time.monotonic() - killed
    print(f"takeover after SIGKILL: {takeover_s:.2f} s")
    assert takeover_s < TAKEOVER_BOUND_S

    def deployed() -> list[dict[str, Any]]:
        return [e for s, e in lifecycle_events if s == "model.deployed" and e["data"]["version"] == 1]

    await asyncio.to_thread(wait_for, "model.deployed from the new leader", deployed, 60)
    [record] = httpx.get(f"{b.url}/api/v1/deployments").json()
    assert (record["version"], record["stage"], record["state"]) == (1, "production", "ready")
    gateway = stack.services["gateway"].url

    def served() -> bool:
        answer = httpx.post(f"{gateway}/v2/models/iris/infer", content=infer_body(ROWS[:1]))
        return answer.status_code == 200 and answer.json()["model_version"] == "1"

    await asyncio.to_thread(wait_for, "the gateway serving v1", served, 30, ignore=(httpx.HTTPError,))
    await asyncio.sleep(1.0)  # anything published late would show up here
    [event] = deployed()
    assert event["data"]["stage"] == "production"
    assert event["leaderterm"] > first_term  # published in the new leader's term
