"""stack.json and the process bookkeeping behind `gallery up/down/status`, with real tiny processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from gallery_cli.records import (
    ProcessRecord,
    Stack,
    StackError,
    is_alive,
    read_stack,
    remove_stack,
    stack_path,
    stop_processes,
    write_stack,
)
from gallery_cli.stack import StackLauncher, nats_port, port_in_use, tail
from gallery_common.service import ServiceSpec
from gallery_common.settings import GallerySettings

Spawn = Callable[..., subprocess.Popen[bytes]]


def record_of(pid: int, name: str = "svc", kind: str = "service", create_time: float | None = None) -> ProcessRecord:
    return ProcessRecord(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        pid=pid,
        port=8001,
        url="http://127.0.0.1:8001",
        started="2026-01-01T00:00:00+00:00",
        create_time=psutil.Process(pid).create_time() if create_time is None else create_time,
    )


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start small Python processes, own session like the real stack; kill leftovers afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def _spawn(code: str = "import time; time.sleep(60)") -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE)
        started.append(proc)
        return proc

    yield _spawn
    for proc in started:
        proc.kill()
        proc.wait()


def test_stack_file_round_trip(tmp_path: Path) -> None:
    path = stack_path(tmp_path)
    stack = Stack(home=str(tmp_path), processes=[record_of(os.getpid(), "nats", "nats"), record_of(os.getpid())])
    write_stack(path, stack)
    assert read_stack(path) == stack
    remove_stack(path)
    assert read_stack(path) is None


@pytest.mark.parametrize("content", ["{not json", '{"version": 99, "home": "x", "processes": []}', '{"version": 1}'])
def test_an_unreadable_stack_file_says_which_and_what_to_do(tmp_path: Path, content: str) -> None:
    path = stack_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(StackError, match=r"stack\.json is not a stack record .*delete it"):
        read_stack(path)


def test_a_recycled_pid_is_not_our_process() -> None:
    me = record_of(os.getpid())
    assert is_alive(me)
    assert not is_alive(record_of(os.getpid(), create_time=me.create_time - 3600))


def test_an_exited_process_is_not_alive(spawn: Spawn) -> None:
    proc = spawn("pass")
    record = record_of(proc.pid)
    proc.wait()
    assert not is_alive(record)


def test_stop_terminates_then_kills_what_ignores_sigterm(spawn: Spawn) -> None:
    polite = spawn()
    stubborn = spawn(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ok', flush=True); time.sleep(60)"
    )
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ok\n"  # its handler is in place
    gone = spawn("pass")
    gone_record = record_of(gone.pid)
    gone.wait()
    nats = spawn()
    stack = Stack(
        home="x",
        processes=[
            record_of(nats.pid, "nats", "nats"),
            record_of(polite.pid, "a"),
            record_of(stubborn.pid, "b"),
            gone_record,
        ],
    )
    started = time.monotonic()
    results = stop_processes(stack, timeout=0.5)
    assert time.monotonic() - started < 5
    assert [(r.record.name, r.outcome) for r in results] == [
        ("a", "stopped"),
        ("b", "killed"),
        ("svc", "not running"),
        ("nats", "stopped"),  # nats-server last, after the services drained
    ]
    assert not any(is_alive(p) for p in stack.processes)


def test_up_refuses_while_a_recorded_process_lives_and_ignores_a_stale_record(tmp_path: Path, spawn: Spawn) -> None:
    launcher = StackLauncher(GallerySettings(home=tmp_path, nats_url="nats://127.0.0.1:1"))
    live = spawn()
    write_stack(launcher.path, Stack(home=str(tmp_path), processes=[record_of(live.pid, "nats", "nats")]))
    with pytest.raises(StackError, match=rf"already running .*nats \(pid {live.pid}\).*gallery down"):
        launcher.check_can_start([])
    live.kill()
    live.wait()
    launcher.check_can_start([])


def test_up_refuses_a_port_that_is_taken(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        assert port_in_use(taken)
        launcher = StackLauncher(GallerySettings(home=tmp_path, nats_url="nats://127.0.0.1:1"))
        with pytest.raises(StackError, match=f"port {taken} for registry is already in use"):
            launcher.check_can_start([ServiceSpec(name="registry", port=taken, app_factory="m:f")])


def test_service_env_pins_the_port_name_home_and_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALLERY_PORT", "9999")  # from the user's shell; must not reach every service
    launcher = StackLauncher(GallerySettings(home=tmp_path / "rel"))
    env = launcher.service_env(ServiceSpec(name="registry", port=8001, app_factory="m:f"), "nats://127.0.0.1:4333")
    assert env["GALLERY_PORT"] == "8001"
    assert env["GALLERY_SERVICE_NAME"] == "registry"
    assert env["GALLERY_NATS_URL"] == "nats://127.0.0.1:4333"
    assert Path(env["GALLERY_HOME"]).is_absolute()


@pytest.mark.parametrize(
    ("url", "port"),
    [("nats://127.0.0.1:5555", 5555), ("nats://localhost", 4222), ("nats://a:4333, nats://b:4444", 4333)],
)
def test_nats_port_comes_from_the_first_url(url: str, port: int) -> None:
    assert nats_port(GallerySettings(nats_url=url)) == port


def test_tail_returns_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail(log, 3) == "line 97\nline 98\nline 99"
    assert tail(tmp_path / "missing.log") == ""
