"""The real trainer app served by uvicorn on a free port, against a real nats-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from uvicorn_thread import served

from gallery_common.bus import EventBus
from gallery_common.events import CloudEvent, Payload
from gallery_common.netutil import free_port
from gallery_trainer.app import create
from gallery_trainer.settings import TrainerSettings

FINAL = ("succeeded", "failed", "cancelled")


def iris_spec(name: str = "iris-mlp", epochs: int = 2, **training: Any) -> dict[str, Any]:
    """The smallest real job: iris, a tiny MLP, one rank."""
    return {
        "name": name,
        "data": {"source": "builtin", "name": "iris"},
        "model": {"hidden": [16]},
        "training": {"epochs": epochs, "batch_size": 16, "learning_rate": 0.05, **training},
        "engine": {"ranks": 1},
    }


def trainer_settings(home: Path, nats_url: str) -> TrainerSettings:
    return TrainerSettings(home=home, nats_url=nats_url, port=free_port(), progress_interval=0.2)


@contextmanager
def serve_trainer(settings: TrainerSettings) -> Iterator[httpx.Client]:
    """The trainer app running in uvicorn; yields an HTTP client on its base URL."""
    with (
        served(create(settings), settings.port, join_s=60) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        yield client


def wait_job(client: httpx.Client, job_id: str, until: tuple[str, ...] = FINAL, timeout: float = 120) -> dict[str, Any]:
    """Poll a job until its status (or phase) is one of `until`."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] in until or job.get("phase") in until:
            return job
        if job["status"] in FINAL or time.monotonic() > deadline:
            raise AssertionError(f"job ended up {job['status']} (wanted {until}): {job}")
        time.sleep(0.2)


def publish(nats_url: str, payload: Payload) -> None:
    async def go() -> None:
        async with EventBus(nats_url, "test") as bus:
            await bus.publish(payload)

    asyncio.run(go())


def stored_events(nats_url: str, subject: str, count: int, timeout: float = 10) -> list[CloudEvent[Any]]:
    """The first `count` events `subject` names (`model.trained`: that event of every project) in the
    stream, fewer if the timeout passes first. Read whatever the subject layout (`model.<event>` or
    `model.<event>.<project>`): matched on the event's name."""
    event_name = subject.removeprefix("model.")

    async def stored() -> list[CloudEvent[Any]]:
        async with EventBus(nats_url, "test") as bus:
            return [e for e in await bus.stored_events() if e.event == event_name]

    deadline = time.monotonic() + timeout
    events = asyncio.run(stored())
    while len(events) < count and time.monotonic() < deadline:
        time.sleep(0.2)
        events = asyncio.run(stored())
    return events[:count]
