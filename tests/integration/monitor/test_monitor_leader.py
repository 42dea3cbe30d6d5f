"""Two monitor processes on one database and one nats-server: the leader SIGKILLed during a drift
episode; the follower takes over, keeps judging the same drift, and no second `model.degraded` goes out."""

from __future__ import annotations

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
from monitor_service_harness import WEIGHTS, publish_samples, put_file
from test_monitor_service import sample_messages, training_rows
from waiting import wait_for

from gallery_common.nats_server import EmbeddedNats

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "e2e"))
from lifecycle_stack import LifecycleStack

WINDOW_S = 3.0
MONITOR = {
    "GALLERY_LEADER_TTL_S": "3",
    "GALLERY_DEPLOYER_URL": "",
    "GALLERY_GATEWAY_URL": "",
    "GALLERY_EVALUATE_INTERVAL_S": "0.5",
    "GALLERY_SLO_WINDOW_S": str(WINDOW_S),
    "GALLERY_SLO_DRIFT_MIN_SAMPLES": "100",
}


class Degraded:
    """Every model.degraded published, duplicates included, seen by a core subscription in a thread."""

    def __init__(self, url: str) -> None:
        self.seen: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self._ready = threading.Event()
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self, url: str) -> None:
        import asyncio

        async def go() -> None:
            nc = await nats.connect(url)

            async def on_message(msg: Any) -> None:
                self.seen.append(orjson.loads(msg.data))

            await nc.subscribe("model.degraded", cb=on_message)
            await nc.flush()
            self._ready.set()
            while not self._stop.is_set():
                await asyncio.sleep(0.05)
            await nc.close()

        asyncio.run(go())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def stack(tmp_path: Path, nats_server: EmbeddedNats) -> Iterator[LifecycleStack]:
    running = LifecycleStack(home=tmp_path, nats_url=nats_server.url)
    try:
        registry = running.start("registry").url
        x = training_rows(np.random.default_rng(0), 2000)
        buffer = io.BytesIO()
        np.savez(buffer, x=x, y=(x @ WEIGHTS).argmax(axis=1))
        split = put_file(tmp_path, "iris/1/train.npz", buffer.getvalue())
        httpx.post(f"{registry}/api/v1/models", json={"name": "iris"}).raise_for_status()
        httpx.post(
            f"{registry}/api/v1/models/iris/versions", json={"artifacts": {"train_split": split}}
        ).raise_for_status()
        yield running
    finally:
        running.stop()


def leader_of(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/leader", timeout=5).json()  # type: ignore[no-any-return]


def test_the_leader_killed_during_a_drift_episode_gives_exactly_one_degraded(
    stack: LifecycleStack, nats_server: EmbeddedNats
) -> None:
    a = stack.start("monitor", **MONITOR)
    wait_for("the first monitor to lead", lambda: leader_of(a.url)["leader"], 20)
    b = stack.start("monitor", replica="-b", **MONITOR)
    wait_for("the second to see the leader", lambda: leader_of(b.url)["holder"], 20)
    assert not leader_of(b.url)["leader"]
    degraded = Degraded(nats_server.url)
    rng = np.random.default_rng(1)

    def shifted(seconds: float) -> None:
        """Feature 2 two standard deviations off, for `seconds`."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            rows = training_rows(rng, 60, shift=2.0)
            publish_samples(nats_server.url, "inference.sample.iris", sample_messages(rows))
            time.sleep(0.3)

    try:
        publish_samples(nats_server.url, "inference.sample.iris", sample_messages(training_rows(rng, 200)))
        deadline = time.monotonic() + 30
        while not degraded.seen:
            assert time.monotonic() < deadline, "no model.degraded from the leader"
            shifted(0.5)
        os.kill(a.process.pid, signal.SIGKILL)
        killed = time.monotonic()
        while not leader_of(b.url)["leader"]:
            assert time.monotonic() - killed < 10, "the follower did not take over within 10 s"
            shifted(0.3)
        print(f"monitor takeover after SIGKILL: {time.monotonic() - killed:.2f} s")
        shifted(2 * WINDOW_S)  # the new leader judges the same drift, episode after episode of evaluations
        drift = httpx.get(f"{b.url}/api/v1/models/iris/drift").json()
        assert drift["drifted"], drift
    finally:
        degraded.close()

    assert [e["id"] for e in degraded.seen] == ["degraded:iris:1:drift:1"]
    [alert] = httpx.get(f"{b.url}/api/v1/alerts", params={"model": "iris", "open": "true"}).json()
    assert alert["event_id"] == "degraded:iris:1:drift:1" and alert["closed_at"] is None
