"""What `gallery up` started, as recorded in `$GALLERY_HOME/run/stack.json`, and whether it still runs.

Each record keeps its process's creation time, so a recycled PID is never mistaken for (or
killed as) one of ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import httpx
import psutil

STACK_FILE_VERSION = 1
LOCAL_HOST = "127.0.0.1"
Kind = Literal["nats", "service", "supervisor"]
State = Literal["running", "restarting", "failed"]


class StackError(RuntimeError):
    """The stack cannot be started, read or stopped; the message says why and what to do."""


@dataclass(frozen=True)
class ProcessRecord:
    """One process of the stack, as written to stack.json."""

    name: str
    kind: Kind
    pid: int
    port: int
    url: str
    started: str
    create_time: float
    log: str = ""
    monitor_port: int | None = None
    # kept up to date by the supervisor: restarts since `gallery up`, why it last exited, and its state
    restarts: int = 0
    last_exit: str | None = None
    state: State = "running"

    @property
    def health_url(self) -> str | None:
        """`/readyz` for a service; JetStream's health check on the monitor port for nats; None for the supervisor."""
        if self.kind == "nats":
            return f"http://{LOCAL_HOST}:{self.monitor_port}/healthz?js-enabled-only=true"
        if self.kind == "supervisor":
            return None
        return f"{self.url}/readyz"


@dataclass
class Stack:
    """Everything `gallery up` started, in start order (nats first)."""

    home: str
    processes: list[ProcessRecord] = field(default_factory=list)
    version: int = STACK_FILE_VERSION


def stack_path(home: Path) -> Path:
    return home / "run" / "stack.json"


def log_path(home: Path, name: str) -> Path:
    return home / "logs" / f"{name}.log"


def stop_marker(home: Path) -> Path:
    """Present while `gallery down` stops the stack: the supervisor then restarts nothing and leaves the
    stopping to `gallery down`."""
    return home / "run" / "stopping"


def read_stack(path: Path) -> Stack | None:
    """The recorded stack, None when there is none; StackError when the file is unreadable."""
    try:
        doc = json.loads(path.read_text())
        if doc.get("version") != STACK_FILE_VERSION:
            raise ValueError(f"unknown version {doc.get('version')!r}")
        processes = [ProcessRecord(**p) for p in doc["processes"]]
        return Stack(home=doc["home"], processes=processes)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise StackError(f"{path} is not a stack record ({exc}); stop its processes by hand and delete it") from None


def write_stack(path: Path, stack: Stack) -> None:
    """Replace stack.json atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(stack), indent=2) + "\n")
    os.replace(tmp, path)


def remove_stack(path: Path) -> None:
    path.unlink(missing_ok=True)


def process_of(record: ProcessRecord) -> psutil.Process | None:
    """The live process behind a record, or None if it exited (or its PID now belongs to another)."""
    try:
        proc = psutil.Process(record.pid)
        if abs(proc.create_time() - record.create_time) > 0.5 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.Error:
        return None


def is_alive(record: ProcessRecord) -> bool:
    return process_of(record) is not None


def is_healthy(record: ProcessRecord, timeout: float = 2.0) -> bool:
    """True when the record's health endpoint answers 200 (the supervisor: when it runs)."""
    if record.health_url is None:
        return is_alive(record)
    try:
        return httpx.get(record.health_url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def running_processes(stack: Stack | None) -> list[ProcessRecord]:
    return [p for p in stack.processes if is_alive(p)] if stack else []


@dataclass(frozen=True)
class StopResult:
    record: ProcessRecord
    outcome: Literal["stopped", "killed", "not running"]


def _wait_gone(records: Iterable[ProcessRecord], timeout: float) -> set[ProcessRecord]:
    """Wait until the records' processes are gone; returns those still alive after `timeout`.

    Polls instead of psutil.wait_procs: these are usually not our children, and a zombie whose
    parent is slow to reap it has already stopped as far as anyone can tell.
    """
    deadline = time.monotonic() + timeout
    pending = set(records)
    while pending:
        pending = {r for r in pending if process_of(r) is not None}
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return pending


def _stop_group(records: Sequence[ProcessRecord], timeout: float) -> list[StopResult]:
    signalled: dict[ProcessRecord, psutil.Process] = {}
    for record in records:
        proc = process_of(record)
        if proc is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
            signalled[record] = proc
    stubborn = _wait_gone(signalled, timeout)
    for record in stubborn:
        with contextlib.suppress(psutil.NoSuchProcess):
            signalled[record].kill()
    _wait_gone(stubborn, 5.0)
    return [
        StopResult(r, "not running" if r not in signalled else "killed" if r in stubborn else "stopped")
        for r in records
    ]


def stop_processes(
    stack: Stack, timeout: float = 15.0, kinds: Sequence[Kind] = ("service", "nats", "supervisor")
) -> list[StopResult]:
    """SIGTERM the processes of `kinds`, a kind at a time in that order; SIGKILL whatever outlives `timeout` s.

    Services go before nats-server so they can drain their NATS connections; the supervisor, which
    restarts nothing while `stop_marker` is present, goes last, having reaped the others.
    """
    results: list[StopResult] = []
    for kind in kinds:
        results += _stop_group([p for p in stack.processes if p.kind == kind], timeout)
    return results


def describe_uptime(record: ProcessRecord) -> str:
    seconds = int(time.time() - record.create_time)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass(frozen=True)
class ProcessStatus:
    record: ProcessRecord
    alive: bool
    healthy: bool


def stack_status(stack: Stack) -> list[ProcessStatus]:
    """Per process: alive (psutil, PID-reuse safe) and healthy (its health endpoint answers 200)."""
    statuses = []
    for record in stack.processes:
        alive = is_alive(record)
        statuses.append(ProcessStatus(record, alive, alive and is_healthy(record)))
    return statuses
