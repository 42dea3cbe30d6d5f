"""SIGKILL of a service in the middle of its handler: the event is redelivered and its work done once."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from chaos_figures import Figures
from lifecycle_stack import LifecycleStack
from onnx_builders import Digits, classifier_signature, mlp_classifier, store_model_artifacts
from waiting import wait_for

from gallery_common.artifacts import open_store
from gallery_common.bus import EVENTS_STREAM
from gallery_common.events import ModelTrained, make_event
from gallery_common.nats_server import EmbeddedNats
from gallery_registry.gate import GATE_DURABLE

MODEL = "chaos-digits"
EVENTS = 6


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LifecycleStack]:
    with EmbeddedNats(tmp_path / "nats", log_file=tmp_path / "nats.log") as nats_server:
        running = LifecycleStack(home=tmp_path / "home", nats_url=nats_server.url)
        try:
            yield running
        finally:
            running.stop()


def versions(registry: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{registry}/api/v1/models/{MODEL}/versions", params={"limit": 1000}, timeout=10)
    return answer.json()["versions"] if answer.status_code == 200 else []  # type: ignore[no-any-return]


def test_registry_killed_while_it_judges_model_trained_events(
    stack: LifecycleStack, tmp_path: Path, figures: Figures
) -> None:
    """SIGKILL of the registry mid-handler (model.trained)"""
    registry = stack.start("registry").url
    data = Digits.load()
    model = mlp_classifier(data)
    store = open_store((stack.home / "artifacts").as_uri())
    events = []
    for i in range(EVENTS):
        run_id = f"chaos-{uuid.uuid4().hex[:8]}"
        artifacts = store_model_artifacts(store, f"runs/{run_id}", model.onnx, data, tmp_path)
        payload = ModelTrained(
            model=MODEL,
            run_id=run_id,
            artifacts=artifacts,
            task="classification",
            class_names=data.class_names,
            signature=classifier_signature(data.n_features, 10),
        )
        events.append(make_event(payload, "/modelgallery/trainer", event_id=f"trained:{run_id}:{i}"))

    async def publish_all() -> None:
        async with stack.bus() as bus:
            for event in events:
                await bus.publish_event(event)

    asyncio.run(publish_all())
    # the moment the first version is registered its handler is still judging it: kill the registry there
    wait_for("the first version registered", lambda: versions(registry), timeout=120, interval=0.02)
    in_flight_versions = versions(registry)
    process = stack.services["registry"].process
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = time.monotonic()
    stack.services.pop("registry")
    registry = stack.start("registry").url
    judged = wait_for(
        f"{EVENTS} versions judged",
        lambda: [v for v in versions(registry) if v["status"] in {"validated", "rejected"}][EVENTS - 1 : EVENTS],
        timeout=180,
    )
    finished = time.monotonic() - killed
    assert judged

    async def stored() -> tuple[list[Any], bool]:
        async with stack.bus() as bus:
            info = await bus.js.consumer_info(EVENTS_STREAM, GATE_DURABLE)
            return await bus.stored_events(), info.num_ack_pending == 0 and info.num_pending == 0

    stored_events, settled = asyncio.run(stored())
    registered = versions(registry)
    outcomes = Counter(
        e.data.version for e in stored_events if e.event in {"validated", "rejected"} and e.data.model == MODEL
    )
    by_run = Counter(v["run_id"] for v in registered)
    figures.update(
        events=EVENTS,
        registered_at_kill=len(in_flight_versions),
        unjudged_at_kill=sum(1 for v in in_flight_versions if v["status"] not in {"validated", "rejected"}),
        versions=len(registered),
        registered_twice=sum(1 for n in by_run.values() if n > 1),
        outcome_events=sum(outcomes.values()),
        outcomes_twice=sum(1 for n in outcomes.values() if n > 1),
        all_judged_after_kill_s=round(finished, 1),
    )
    assert settled, "the gate's consumer has deliveries left unsettled"
    assert len(registered) == EVENTS and all(n == 1 for n in by_run.values())
    assert sorted(outcomes) == sorted(v["version"] for v in registered)
    assert all(n == 1 for n in outcomes.values()), f"an outcome was published twice: {outcomes}"
