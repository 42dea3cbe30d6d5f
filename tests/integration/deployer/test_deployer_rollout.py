"""The deployer as `gallery up` runs it, with the local runtime, the gateway and the registry.

validated → production; validated → canary; optimized → rolling update of the canary; the
canary analysis passes → promoted (alias moved, old version drained) — with requests running
through the gateway the whole time and none failing. Then a canary that disagrees with
production is rolled back, a killed model server is restarted, and a model scaled to zero
wakes on the next request.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import numpy as np
import orjson
import pytest
from deployer_stack import (
    Load,
    classifier,
    infer_body,
    publish,
    put,
    start_stack,
    validated,
)
from deployer_stack import register as register_version
from waiting import wait_for

from gallery_common.bus import EventBus
from gallery_common.events import ArtifactRef, ModelOptimized
from gallery_common.nats_server import EmbeddedNats

RNG = np.random.default_rng(11)
W1 = RNG.normal(size=(4, 3))
W2 = W1 + RNG.normal(scale=1e-3, size=(4, 3))  # a retrained model that agrees with v1
W3 = -W1  # a model that disagrees with production on nearly every row
ROWS = RNG.normal(size=(200, 4)).astype(np.float32)


# the tests are steps of the story above, each starting from where the one before left the stack
pytestmark = pytest.mark.story


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, nats_module: EmbeddedNats) -> Iterator[Any]:
    home = tmp_path_factory.mktemp("home")
    running = start_stack(
        home,
        nats_module.url,
        GALLERY_CANARY_WINDOW_S="4",
        GALLERY_CANARY_MIN_REQUESTS="5",
        GALLERY_DRAIN_S="2",
        GALLERY_READY_TIMEOUT_S="60",
    )
    yield running
    running.stop()


class Events:
    """Every lifecycle event seen on the bus, as (subject, data)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def of(self, subject: str, **match: object) -> list[dict[str, Any]]:
        # `subject` is `model.<event>`: the event in any project (subjects are `model.<event>.<project>`)
        matching = (d for s, d in self.seen if s.startswith(subject + "."))
        return [d for d in matching if all(d.get(k) == v for k, v in match.items())]


@pytest.fixture
async def events(nats_module: EmbeddedNats) -> AsyncIterator[Events]:
    collected = Events()
    nc = await nats.connect(nats_module.url)

    async def on_message(msg: Any) -> None:
        collected.seen.append((msg.subject, orjson.loads(msg.data)["data"]))

    await nc.subscribe("model.>", cb=on_message)
    yield collected
    await nc.close()


async def eventually(what: str, check: Any, timeout: float = 60.0) -> Any:
    return await asyncio.to_thread(wait_for, what, check, timeout)


# the versions of these tests are validated on the rows their canaries replay
register = functools.partial(register_version, rows=ROWS)


def deployments(deployer: str) -> list[dict[str, Any]]:
    return httpx.get(f"{deployer}/api/v1/deployments").json()  # type: ignore[no-any-return]


def production_alias(registry: str) -> int:
    return int(httpx.get(f"{registry}/api/v1/models/iris/aliases/production").json()["version"])


def handled_by_deployer(deployer: str) -> float:
    """Deliveries the deployer's consumer has settled, from its /metrics."""
    total = 0.0
    for line in httpx.get(f"{deployer}/metrics").text.splitlines():
        if line.startswith("modelgallery_bus_events_handled_total{") and 'durable="deployer"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def served_version(gateway: str) -> str:
    return str(httpx.post(f"{gateway}/v2/models/iris/infer", content=infer_body(ROWS[:1])).json()["model_version"])


async def test_validated_canary_optimized_promoted_with_no_failed_request(
    stack: Any, events: Events, nats_module: EmbeddedNats
) -> None:
    registry, gateway, deployer = (stack.services[n].url for n in ("registry", "gateway", "deployer"))
    home = stack.home

    v1 = register(registry, home, 1, W1)
    await publish(nats_module.url, validated(1, v1), "validated-iris-1")
    await eventually("v1 in production", lambda: events.of("model.deployed", version=1, stage="production"))
    assert production_alias(registry) == 1
    load = Load(f"{gateway}/v2/models/iris/infer", infer_body(ROWS[:2])).start()
    try:
        v2 = register(registry, home, 2, W2)
        await publish(nats_module.url, validated(2, v2), "validated-iris-2")
        canary = await eventually("v2 canary", lambda: events.of("model.deployed", version=2, stage="canary"))
        assert canary[0]["traffic_percent"] == 10.0
        weights = {d["version"]: d["traffic_percent"] for d in deployments(deployer)}
        assert weights == {1: 90.0, 2: 10.0}

        int8 = put(home, "iris/2/int8.onnx", classifier(W2 * 1.0001))
        # as the optimizer does before it announces a variant
        assert httpx.put(f"{registry}/api/v1/models/iris/versions/2/artifacts/int8", json=int8).status_code == 200
        optimized = ModelOptimized(
            model="iris", version=2, recommended="int8_dynamic", recommended_artifact=ArtifactRef(**int8)
        )
        await publish(nats_module.url, optimized, "optimized:iris:2")
        await eventually(
            "the canary rolled to int8", lambda: events.of("model.deployed", version=2, variant="int8_dynamic")
        )
        promoted = await eventually(
            "v2 promoted", lambda: events.of("model.deployed", version=2, stage="production"), timeout=90
        )
        assert promoted[0]["variant"] == "int8_dynamic" and promoted[0]["traffic_percent"] == 100.0
        await eventually("v1 retired", lambda: [d["version"] for d in deployments(deployer)] == [2], timeout=30)
    finally:
        load.stop()

    assert len(load.statuses) > 100, "the load must have run through the whole rollout"
    assert load.failures == [], load.failures[:5]
    assert production_alias(registry) == 2
    history = httpx.get(f"{registry}/api/v1/models/iris/aliases/production/history").json()
    assert history[0]["reason"] == "promoted: canary analysis passed"
    assert served_version(gateway) == "2"


async def test_a_canary_that_disagrees_with_production_is_rolled_back(
    stack: Any, events: Events, nats_module: EmbeddedNats
) -> None:
    registry, gateway, deployer = (stack.services[n].url for n in ("registry", "gateway", "deployer"))
    v3 = register(registry, stack.home, 3, W3)
    await publish(nats_module.url, validated(3, v3), "validated-iris-3")

    rolled = await eventually("v3 rolled back", lambda: events.of("model.rolled_back", version=3), timeout=90)

    assert rolled[0]["to_version"] == 2
    assert "agrees with the baseline" in rolled[0]["reason"]
    assert [d["version"] for d in deployments(deployer)] == [2]
    assert production_alias(registry) == 2
    assert served_version(gateway) == "2"
    # announcing the rolled-back version again changes nothing: only a person deploys it again
    handled = handled_by_deployer(deployer)
    await publish(nats_module.url, validated(3, v3), "validated-iris-3-again")
    await eventually("the deployer handled it", lambda: handled_by_deployer(deployer) > handled)
    assert len(events.of("model.deployed", version=3)) == 1
    assert [d["version"] for d in deployments(deployer)] == [2]


async def dead_letter_reasons(nats_url: str) -> dict[str, str]:
    async with EventBus(nats_url, "test") as bus:
        return {d.event_id or "": d.reason for d in await bus.dead_letters()}


async def test_forged_events_that_slip_past_nats_are_refused_by_the_registry_check(
    stack: Any, events: Events, nats_module: EmbeddedNats
) -> None:
    registry, gateway, deployer = (stack.services[n].url for n in ("registry", "gateway", "deployer"))

    def serving() -> list[tuple[int, str, str, float]]:
        return [(d["version"], d["variant"], d["stage"], d["traffic_percent"]) for d in deployments(deployer)]

    before = serving()
    # a version registered by hand and never judged by the gate, announced as validated
    v4 = register(registry, stack.home, 4, W1, validated=False)
    await publish(nats_module.url, validated(4, v4), "forged-validated-iris-4")
    # a validated version announced with another ONNX file than the one the gate judged
    swapped = dict(v4, onnx=put(stack.home, "iris/evil.onnx", classifier(W3)))
    await publish(nats_module.url, validated(2, swapped), "forged-validated-iris-2")
    # an "optimized variant" the optimizer never attached
    evil = ArtifactRef(**put(stack.home, "iris/2/evil-int8.onnx", classifier(W3)))
    optimized = ModelOptimized(model="iris", version=2, recommended="int8_dynamic", recommended_artifact=evil)
    await publish(nats_module.url, optimized, "forged-optimized-iris-2")

    reasons = await eventually(
        "three refusals",
        lambda: (
            (found := asyncio.run(dead_letter_reasons(nats_module.url)))
            and {"forged-validated-iris-4", "forged-validated-iris-2", "forged-optimized-iris-2"} <= set(found)
            and found
        ),
    )
    assert "the registry holds iris:4 as 'pending', not validated" in reasons["forged-validated-iris-4"]
    assert "is not the one the registry recorded for iris:2" in reasons["forged-validated-iris-2"]
    assert "is not an artifact the registry holds for iris:2" in reasons["forged-optimized-iris-2"]
    assert serving() == before and not events.of("model.deployed", version=4)
    assert served_version(gateway) == "2"


async def test_a_killed_model_server_is_restarted_and_serves_again(stack: Any) -> None:
    gateway, deployer = stack.services["gateway"].url, stack.services["deployer"].url
    before = deployments(deployer)[0]
    port = int(before["endpoints"][0].rsplit(":", 1)[1])
    pid = _pid_listening_on(port)

    os.kill(pid, signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        row = deployments(deployer)[0]
        return row if row["state"] == "ready" and row["replicas"][0]["restarts"] >= 1 else None

    await eventually("the replica restarted", restarted, timeout=60)
    assert served_version(gateway) == "2"


async def test_scaled_to_zero_the_next_request_wakes_the_model(stack: Any) -> None:
    gateway, deployer = stack.services["gateway"].url, stack.services["deployer"].url
    scaled = httpx.post(f"{deployer}/api/v1/deployments/iris/versions/2/scale", json={"replicas": 0}, timeout=60)
    assert scaled.status_code == 200, scaled.text
    assert scaled.json()["state"] == "scaled_to_zero"
    assert httpx.get(f"{gateway}/admin/routes/iris").json()["policy"]["asleep"] is True

    answer = httpx.post(f"{gateway}/v2/models/iris/infer", content=infer_body(ROWS[:1]), timeout=60)

    assert answer.status_code == 200, answer.text
    assert deployments(deployer)[0]["ready_replicas"] == 1


def _pid_listening_on(port: int) -> int:
    """The pid of the process with a listening socket on `port` (from /proc, no extra tools)."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if int(parts[1].rsplit(":", 1)[1], 16) == port and parts[3] == "0A":
                inode = parts[9]
    assert inode is not None, f"nothing listens on port {port}"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) == f"socket:[{inode}]":
                    return int(entry.name)
        except OSError:
            continue
    raise AssertionError(f"no process owns the socket on port {port}")


def test_the_cli_lists_deployments_and_explains_what_it_cannot_do(stack: Any) -> None:
    import subprocess
    import sys

    gallery = str(Path(sys.executable).with_name("gallery"))
    env = {**os.environ, "GALLERY_DEPLOYER_URL": stack.services["deployer"].url, "COLUMNS": "160"}

    listed = subprocess.run([gallery, "deployments"], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "iris" in line)
    assert "production" in row and "100%" in row and "1/1" in row and "ready" in row

    promote = subprocess.run([gallery, "promote", "iris"], env=env, capture_output=True, text=True, timeout=60)
    assert promote.returncode == 1 and "has no canary to promote" in promote.stderr

    missing = subprocess.run([gallery, "deploy", "iris:9"], env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "iris:9 not found" in missing.stderr

    bad = subprocess.run([gallery, "deploy", "iris"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "expected NAME:VERSION" in bad.stderr


async def test_an_int8_variant_answering_below_the_quality_slo_gives_way_to_fp32_and_the_version_stays(
    stack: Any, events: Events, nats_module: EmbeddedNats
) -> None:
    """Labels say v2's INT8 variant answers wrong: the monitor's model.degraded names the variant, and the
    deployer serves v2's own FP32 model instead of rolling v2 back; the registry does not mark v2."""
    registry, gateway, deployer, monitor = (
        stack.services[n].url for n in ("registry", "gateway", "deployer", "monitor")
    )
    assert [(d["version"], d["variant"]) for d in deployments(deployer)] == [(2, "int8_dynamic")]
    keep = httpx.patch(f"{deployer}/api/v1/policies/iris", json={"record_outcomes": True}, timeout=30)
    assert keep.status_code == 200 and keep.json()["on_variant_breach"] == "serve_fp32", keep.text
    slo = {"min_online_accuracy": 0.5, "quality_min_rows": 20, "quality_window_s": 600}
    assert httpx.put(f"{monitor}/api/v1/slos/iris", json=slo, timeout=30).status_code == 200

    def labelled_wrong() -> bool:
        """30 answers, each labelled with a class it did not give; False while the route does not keep answers."""
        outcomes = []
        for row in ROWS[:30]:
            answer = httpx.post(f"{gateway}/v2/models/iris/infer", content=infer_body(row[None]), timeout=30).json()
            top = int(np.argmax(answer["outputs"][0]["data"]))
            outcomes.append({"request_id": answer["id"], "label": [(top + 1) % 3]})
        given = httpx.post(f"{gateway}/v2/models/iris/feedback", json={"outcomes": outcomes}, timeout=30)
        return given.status_code == 202

    try:
        await eventually("wrong labels on kept answers", labelled_wrong, timeout=30)
        degraded = await eventually(
            "INT8's model.degraded", lambda: events.of("model.degraded", version=2, variant="int8_dynamic")
        )
        fp32 = await eventually(
            "v2's FP32 serving", lambda: events.of("model.deployed", version=2, variant="fp32"), timeout=90
        )
    finally:
        httpx.put(f"{monitor}/api/v1/slos/iris", json={"min_online_accuracy": None}, timeout=30)
        httpx.patch(f"{deployer}/api/v1/policies/iris", json={"record_outcomes": False}, timeout=30)

    assert degraded[0]["kind"] == "quality"
    assert degraded[0]["reason"].startswith("variant int8_dynamic: online accuracy 0.0% < SLO 50.0%")
    assert fp32[0]["stage"] == "production"
    [row] = deployments(deployer)
    assert (row["version"], row["variant"], row["stage"]) == (2, "fp32", "production")
    assert row["reason"].startswith("FP32 instead of int8_dynamic, whose answers broke the quality SLO: variant")
    assert not events.of("model.rolled_back", version=2) and production_alias(registry) == 2
    assert served_version(gateway) == "2"
    assert "needs_revalidation" not in httpx.get(f"{registry}/api/v1/models/iris/versions/2").json()["tags"]

    # INT8 is withdrawn: the optimizer announcing it again for v2 does not roll it back in
    listed = {v["variant"]: v for v in httpx.get(f"{deployer}/api/v1/deployments/iris/variants", timeout=30).json()}
    assert listed["fp32"]["serving"] and not listed["int8_dynamic"]["serving"]
    assert listed["int8_dynamic"]["withdrawn"].startswith("quality: variant int8_dynamic: online accuracy 0.0%")
    int8 = ArtifactRef.model_validate(listed["int8_dynamic"]["artifact"])
    handled = handled_by_deployer(deployer)
    again = ModelOptimized(model="iris", version=2, recommended="int8_dynamic", recommended_artifact=int8)
    await publish(nats_module.url, again, "optimized:iris:2:again")
    await eventually("the deployer handled it", lambda: handled_by_deployer(deployer) > handled)
    assert [(d["version"], d["variant"]) for d in deployments(deployer)] == [(2, "fp32")]
    assert not events.of("model.deployed", version=2, variant="int8_dynamic")


async def test_a_breached_latency_slo_publishes_one_degraded_and_the_deployer_rolls_back(
    stack: Any, events: Events
) -> None:
    registry, gateway, monitor = (stack.services[n].url for n in ("registry", "gateway", "monitor"))
    assert production_alias(registry) == 2
    slo = httpx.put(f"{monitor}/api/v1/slos/iris", json={"p99_ms": 0.001, "window_s": 5})
    assert slo.status_code == 200, slo.text
    load = Load(f"{gateway}/v2/models/iris/infer", infer_body(ROWS[:2])).start()
    try:
        degraded = await eventually("model.degraded", lambda: events.of("model.degraded", version=2), timeout=60)
        rolled = await eventually("the rollback", lambda: events.of("model.rolled_back", version=2), timeout=60)
        await asyncio.sleep(3.0)  # more breaching traffic in the same episode
    finally:
        load.stop()
        httpx.put(f"{monitor}/api/v1/slos/iris", json={"p99_ms": 100})

    assert len(events.of("model.degraded", version=2)) == 1, "one alert per episode, not a storm"
    assert degraded[0]["kind"] == "slo" and "p99" in degraded[0]["reason"]
    assert rolled[0]["to_version"] == 1
    assert production_alias(registry) == 1
    assert served_version(gateway) == "1"
    assert httpx.get(f"{registry}/api/v1/models/iris/versions/2").json()["tags"]["needs_revalidation"] == "true"
