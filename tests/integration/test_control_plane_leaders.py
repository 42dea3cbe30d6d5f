"""Two deployers and two monitors on one database and one nats-server, and the machine holding both
leaders dies: each leader is SIGKILLed in the middle of its work and each follower takes over within
10 s and finishes it once.

- The deployers hold the Lease `deployer-leader` (GALLERY_LEADER_LOCK=lease, on the fake Kubernetes
  API of the deployer's tests); their leader dies while its model server starts for `model.validated`.
  The follower refuses to act until then (503 naming the leader), gets the event back from JetStream
  and deploys: one `model.deployed`, in the new term, served through the gateway.
- The monitors hold the key `monitor` of the JetStream bucket `leaders` (auto, outside a cluster);
  their leader dies after it published `model.degraded` for a drift episode. The follower, which
  ingested the same samples, keeps judging the drift and reuses the episode open in the database:
  exactly one `model.degraded`, one open alert.

The processes start together and the two scenarios run at once, so the test costs one stack's start.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import numpy as np
import orjson
import pytest

sys.path[:0] = [str(Path(__file__).parent / "deployer"), str(Path(__file__).parent / "monitor")]
from deployer_stack import classifier, infer_body, put, validation_split  # noqa: E402
from k8s_api_fake import FakeKubernetesApi  # noqa: E402
from lifecycle_stack import LifecycleStack  # noqa: E402
from monitor_service_harness import WEIGHTS, publish_samples  # noqa: E402
from test_monitor_service import sample_messages, training_rows  # noqa: E402
from waiting import wait_for  # noqa: E402

from gallery_common.bus import EventBus  # noqa: E402
from gallery_common.events import ArtifactRef, ModelValidated  # noqa: E402
from gallery_common.nats_server import EmbeddedNats  # noqa: E402

TAKEOVER_BOUND_S = 10.0
TTL = "2"  # renewed every 0.67 s; a leader gone is replaced in about 2.7 s
WINDOW_S = 3.0
DEPLOYER = {"GALLERY_LEADER_TTL_S": TTL, "GALLERY_READY_TIMEOUT_S": "60", "GALLERY_LEADER_LOCK": "lease"}
MONITOR = {
    "GALLERY_LEADER_TTL_S": TTL,
    "GALLERY_DEPLOYER_URL": "",
    "GALLERY_GATEWAY_URL": "",
    "GALLERY_EVALUATE_INTERVAL_S": "0.5",
    "GALLERY_SLO_WINDOW_S": str(WINDOW_S),
    "GALLERY_SLO_DRIFT_MIN_SAMPLES": "100",
}
SERVED = "petals"  # the deployer's model; the monitor judges iris (the samples name it)
ROWS = np.random.default_rng(5).normal(size=(50, 4)).astype(np.float32)


class Published:
    """Every lifecycle message published, duplicates included (a core subscription, in a thread)."""

    def __init__(self, url: str) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(url),), daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    async def _run(self, url: str) -> None:
        nc = await nats.connect(url)

        async def on_message(msg: Any) -> None:
            self.seen.append((msg.subject, orjson.loads(msg.data)))

        await nc.subscribe("model.>", cb=on_message)
        await nc.flush()
        self._ready.set()
        while not self._stop.is_set():
            await asyncio.sleep(0.05)
        await nc.close()

    def of(self, subject: str, model: str) -> list[dict[str, Any]]:
        # `subject` is `model.<event>`: the event in any project (subjects are `model.<event>.<project>`)
        seen = list(self.seen)
        return [e for s, e in seen if s.startswith(subject + ".") and e.get("data", {}).get("model") == model]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def kubernetes(tmp_path: Path) -> Iterator[tuple[FakeKubernetesApi, Path]]:
    with FakeKubernetesApi() as api:
        yield api, api.kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def stack(tmp_path: Path, nats_server: EmbeddedNats) -> Iterator[LifecycleStack]:
    running = LifecycleStack(home=tmp_path / "home", nats_url=nats_server.url)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def published(nats_server: EmbeddedNats) -> Iterator[Published]:
    seen = Published(nats_server.url)
    yield seen
    seen.close()


def leader_of(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/leader", timeout=5).json()  # type: ignore[no-any-return]


def leading(*urls: str) -> tuple[str, str]:
    """(the leader's URL, a follower's URL) once one of `urls` leads and the other sees it."""

    def found() -> tuple[str, str] | None:
        states = {url: leader_of(url) for url in urls}
        leaders = [url for url, s in states.items() if s["leader"]]
        if len(leaders) != 1:
            return None
        [follower] = [url for url in urls if url != leaders[0]]
        return (leaders[0], follower) if states[follower]["holder_url"] == leaders[0] else None

    return wait_for(f"one of {urls} to lead and the other to see it", found, 30, 0.1)  # type: ignore[no-any-return]


def register(registry: str, home: Path) -> dict[str, ArtifactRef]:
    """petals 1, validated, for the deployer; iris 1 with its training split, the monitor's drift baseline."""
    x = training_rows(np.random.default_rng(0), 2000)
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=(x @ WEIGHTS).argmax(axis=1))
    train = put(home, "iris/1/train.npz", buffer.getvalue())
    served = {
        "onnx": put(home, f"{SERVED}/1/model.onnx", classifier(np.eye(4, 3))),
        "validation_split": validation_split(home, ROWS),
    }
    for model, artifacts in (("iris", {"train_split": train}), (SERVED, served)):
        assert httpx.post(f"{registry}/api/v1/models", json={"name": model}).status_code == 201
        created = httpx.post(f"{registry}/api/v1/models/{model}/versions", json={"artifacts": artifacts})
        assert created.status_code == 201, created.text
    for status in ("validating", "validated"):
        marked = httpx.patch(f"{registry}/api/v1/models/{SERVED}/versions/1", json={"status": status})
        assert marked.status_code == 200, marked.text
    return {k: ArtifactRef(**v) for k, v in served.items()}


def test_both_leaders_killed_mid_work_their_followers_finish_it_once(
    stack: LifecycleStack,
    nats_server: EmbeddedNats,
    kubernetes: tuple[FakeKubernetesApi, Path],
    published: Published,
) -> None:
    fake, kubeconfig = kubernetes
    deployer = {**DEPLOYER, "KUBECONFIG": str(kubeconfig)}
    registry, gateway, *_ = stack.start_together(
        ("registry", "", {}),
        ("gateway", "", {"GALLERY_SAMPLE_RATE": "0"}),
        ("deployer", "", deployer),
        ("monitor", "", MONITOR),
    )
    # the second processes once the first have migrated the databases they share
    stack.start_together(("deployer", "-b", deployer), ("monitor", "-b", MONITOR))
    deployers = {s.url: s for s in (stack.services["deployer"], stack.services["deployer-b"])}
    monitors = {s.url: s for s in (stack.services["monitor"], stack.services["monitor-b"])}
    deployer_leader, deployer_follower = leading(*deployers)
    monitor_leader, monitor_follower = leading(*monitors)
    first_term = leader_of(deployer_leader)["term"]
    lease = fake.get("leases", "deployer-leader")
    assert lease is not None and lease["spec"]["holderIdentity"] == leader_of(deployer_leader)["identity"]

    refused = httpx.post(f"{deployer_follower}/api/v1/deployments", json={"model": SERVED, "version": 1})
    assert refused.status_code == 503
    holder = leader_of(deployer_follower)["holder"]
    assert refused.json()["error"].endswith(f"the leader is {holder} at {deployer_leader}")
    assert httpx.get(f"{deployer_follower}/api/v1/deployments").status_code == 200  # reads answer on a follower
    artifacts = register(registry.url, stack.home)
    rng = np.random.default_rng(1)

    def shifted(seconds: float) -> None:
        """iris samples with feature 2 two standard deviations off, for `seconds`."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            publish_samples(nats_server.url, "inference.sample.iris", sample_messages(training_rows(rng, 60, 2.0)))
            time.sleep(0.3)

    # the monitor leader opens a drift episode
    publish_samples(nats_server.url, "inference.sample.iris", sample_messages(training_rows(rng, 200)))
    deadline = time.monotonic() + 30
    while not published.of("model.degraded", "iris"):
        assert time.monotonic() < deadline, "no model.degraded from the monitor leader"
        shifted(0.5)

    # the deployer leader is mid-rollout once its model server has started
    async def validated() -> None:
        async with EventBus(nats_server.url, source="/tests/registry") as bus:
            event = ModelValidated(model=SERVED, version=1, artifacts=artifacts)
            await bus.publish(event, event_id=f"validated-{SERVED}-1")

    asyncio.run(validated())
    replica_logs = stack.home / "deployer" / "logs" / f"{SERVED}-v1"
    deadline = time.monotonic() + 30
    while not any(replica_logs.glob("*")):
        assert time.monotonic() < deadline, "the deployer leader started no model server"
        shifted(0.05)

    # the machine holding both leaders dies
    os.kill(deployers[deployer_leader].process.pid, signal.SIGKILL)
    os.kill(monitors[monitor_leader].process.pid, signal.SIGKILL)
    killed = time.monotonic()
    takeover: dict[str, float] = {}
    while len(takeover) < 2:
        for role, url in (("deployer", deployer_follower), ("monitor", monitor_follower)):
            if role not in takeover and leader_of(url)["leader"]:
                takeover[role] = time.monotonic() - killed
        assert time.monotonic() - killed < TAKEOVER_BOUND_S, f"no takeover within 10 s: {takeover}"
        shifted(0.1)
    print(f"takeover after SIGKILL: deployer {takeover['deployer']:.2f} s, monitor {takeover['monitor']:.2f} s")

    # the new deployer leader finishes the rollout; the new monitor leader judges the drift on, a window or more
    while not published.of("model.deployed", SERVED) or time.monotonic() - killed < takeover["monitor"] + WINDOW_S:
        assert time.monotonic() - killed < 60, "no model.deployed from the new deployer leader"
        shifted(0.3)
    drift = httpx.get(f"{monitor_follower}/api/v1/models/iris/drift").json()
    assert drift["drifted"], drift

    [record] = httpx.get(f"{deployer_follower}/api/v1/deployments").json()
    assert (record["model"], record["version"], record["stage"], record["state"]) == (SERVED, 1, "production", "ready")

    def served() -> bool:
        answer = httpx.post(f"{gateway.url}/v2/models/{SERVED}/infer", content=infer_body(ROWS[:1]))
        return answer.status_code == 200 and answer.json()["model_version"] == "1"

    wait_for(f"the gateway serving {SERVED} 1", served, 30, ignore=(httpx.HTTPError,))
    time.sleep(0.5)  # anything published late would show up here
    [deployed] = published.of("model.deployed", SERVED)
    assert deployed["data"]["stage"] == "production"
    assert deployed["leaderterm"] > first_term  # published in the new leader's term
    lease = fake.get("leases", "deployer-leader")
    assert lease is not None and lease["spec"]["holderIdentity"] == leader_of(deployer_follower)["identity"]
    assert lease["spec"]["leaseTransitions"] == 1

    assert [e["id"] for e in published.of("model.degraded", "iris")] == ["degraded:iris:1:drift:1"]
    [alert] = httpx.get(f"{monitor_follower}/api/v1/alerts", params={"model": "iris", "open": "true"}).json()
    assert alert["event_id"] == "degraded:iris:1:drift:1" and alert["closed_at"] is None
