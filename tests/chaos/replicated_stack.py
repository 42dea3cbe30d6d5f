"""The embedded stack with two processes of every service that can have two (trainer, optimizer,
deployer, monitor), as the end-to-end tests start it (each service its own process, a NATS user each),
and the reads the replica scenarios share."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from lifecycle_stack import LifecycleStack, ServiceProcess

from gallery_common.events import CloudEvent

REPLICAS = ("", "-b")
# short enough that a takeover fits a chaos scenario; the figures say which values they ran with
JOB_ACK_WAIT_S = "4"
LEADER_TTL_S = "3"
MONITOR_WINDOW_S = "8"


def start_replicated(stack: LifecycleStack) -> None:
    """registry and gateway once; trainer, optimizer, deployer and monitor twice (`<name>` and `<name>-b`)."""
    home = stack.home
    stack.start("registry")
    stack.start("gateway", GALLERY_SAMPLE_RATE="1")
    for replica in REPLICAS:
        tag = replica or "-a"
        # each trainer and optimizer replica works in its own folder, as on its own machine
        stack.start(
            "trainer",
            replica=replica,
            GALLERY_JOBS_DIR=str(home / f"trainer{tag}"),
            GALLERY_JOB_ACK_WAIT_S=JOB_ACK_WAIT_S,
        )
        stack.start(
            "optimizer",
            replica=replica,
            GALLERY_WORK_DIR=str(home / f"optimizer{tag}"),
            GALLERY_JOB_ACK_WAIT_S=JOB_ACK_WAIT_S,
        )
    for replica in REPLICAS:
        start_deployer(stack, replica)
    for replica in REPLICAS:
        start_monitor(stack, replica)


def start_deployer(stack: LifecycleStack, replica: str) -> ServiceProcess:
    return stack.start("deployer", replica=replica, GALLERY_LEADER_TTL_S=LEADER_TTL_S, GALLERY_READY_TIMEOUT_S="60")


def start_monitor(stack: LifecycleStack, replica: str) -> ServiceProcess:
    return stack.start(
        "monitor",
        replica=replica,
        GALLERY_LEADER_TTL_S=LEADER_TTL_S,
        GALLERY_SCRAPE_INTERVAL_S="1",
        GALLERY_EVALUATE_INTERVAL_S="1",
        GALLERY_SLO_WINDOW_S=MONITOR_WINDOW_S,
        GALLERY_SLO_DRIFT_MIN_SAMPLES="100",
    )


def kill(stack: LifecycleStack, key: str) -> float:
    """SIGKILL the process `key` (as a crashed machine) and forget it; returns when it died (monotonic)."""
    process: subprocess.Popen[bytes] = stack.services.pop(key).process
    process.send_signal(signal.SIGKILL)
    process.wait()
    return time.monotonic()


def replica_key(stack: LifecycleStack, name: str, holder: str | None) -> str | None:
    """Which process of `name` a job record's holder (`host:pid`) is."""
    for replica in REPLICAS:
        service = stack.services.get(name + replica)
        if service is not None and holder and holder.endswith(f":{service.process.pid}"):
            return name + replica
    return None


def leader_key(stack: LifecycleStack, name: str) -> str | None:
    """Which process of `name` says it leads."""
    for replica in REPLICAS:
        service = stack.services.get(name + replica)
        if service is None:
            continue
        try:
            if httpx.get(f"{service.url}/leader", timeout=5).json()["leader"]:
                return name + replica
        except httpx.HTTPError:
            continue
    return None


def stored(stack: LifecycleStack) -> list[CloudEvent[Any]]:
    async def read() -> list[CloudEvent[Any]]:
        async with stack.bus() as bus:
            return await bus.stored_events()

    return asyncio.run(read())


def events_of(stack: LifecycleStack, kind: str, **match: object) -> list[CloudEvent[Any]]:
    """The stored `model.<kind>` events whose payload has every `match` field."""
    return [
        e for e in stored(stack) if e.event == kind and all(getattr(e.data, k, None) == v for k, v in match.items())
    ]


def versions(stack: LifecycleStack, model: str) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{stack.services['registry'].url}/api/v1/models/{model}/versions", params={"limit": 100}, timeout=10
    )
    return answer.json()["versions"] if answer.status_code == 200 else []  # type: ignore[no-any-return]


def artifacts_dir(stack: LifecycleStack) -> Path:
    return stack.home / "artifacts"
