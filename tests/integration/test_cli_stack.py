"""`gallery up` / `status` / `down` as a user runs them: real nats-server and a real service process.

No service package is needed: each test installs a tiny one into a temp directory (a module plus a
`*.dist-info` with a `modelgallery.services` entry point) and puts it on the CLI's PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from gallery_common.netutil import free_port

GALLERY = Path(sys.executable).parent / "gallery"

SERVICE_MODULE = """
from gallery_common.service import ServiceSpec

SERVICE = ServiceSpec(name="{name}", port={port}, app_factory="{module}:create")


def create():
    {body}
"""
# The real app factory with the bus on: /readyz is 200 only once the service reached the stack's NATS.
WORKING_APP = """from gallery_common.app import create_app
    from gallery_common.settings import load_settings

    return create_app(load_settings(), title="echo")"""
BROKEN_APP = 'raise RuntimeError("echo cannot start: no weights")'


@dataclass
class Sandbox:
    """A GALLERY_HOME, a NATS port and an installed fake service, with the env to run `gallery` in."""

    home: Path
    nats_port: int
    service_port: int
    env: dict[str, str]

    def gallery(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        if args[:1] == ("up",):
            # the services installed in the venv are not this test's business
            args = (*args, "--only", "echo")
        return subprocess.run(
            [str(GALLERY), *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def stack(self) -> dict:
        return json.loads((self.home / "run" / "stack.json").read_text())


def install_service(site: Path, name: str, port: int, body: str) -> None:
    module = f"fake_{name}"
    (site / f"{module}.py").write_text(
        textwrap.dedent(SERVICE_MODULE).format(name=name, port=port, module=module, body=body)
    )
    dist = site / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[modelgallery.services]\n{name} = {module}:SERVICE\n")


def make_sandbox(tmp_path: Path, body: str) -> Sandbox:
    site = tmp_path / "site"
    site.mkdir()
    service_port = free_port()
    install_service(site, "echo", service_port, body)
    nats_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALLERY_")}
    env.update(
        GALLERY_HOME=str(tmp_path / "home"),
        GALLERY_NATS_URL=f"nats://127.0.0.1:{nats_port}",
        PYTHONPATH=os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")])),
        COLUMNS="200",  # rich would otherwise wrap the tables at 80 columns
    )
    return Sandbox(tmp_path / "home", nats_port, service_port, env)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = make_sandbox(tmp_path, WORKING_APP)
    yield box
    # Whatever a failing test left running must not outlive it.
    box.gallery("down")


def pids_gone(pids: list[int], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
            return True
        time.sleep(0.05)
    return False


def test_up_detach_status_down(sandbox: Sandbox) -> None:
    sandbox.env["GALLERY_HOST"] = "0.0.0.0"  # without API tokens this must still mean loopback only
    up = sandbox.gallery("up", "--detach")
    assert up.returncode == 0, up.stdout + up.stderr
    records = {p["name"]: p for p in sandbox.stack()["processes"]}
    assert set(records) == {"nats", "echo"}
    for name, record in records.items():
        assert name in up.stdout and str(record["pid"]) in up.stdout
    assert f"http://127.0.0.1:{sandbox.service_port}" in up.stdout
    assert records["nats"]["url"] == f"nats://127.0.0.1:{sandbox.nats_port}"
    assert "echo binds to 127.0.0.1 only" in (sandbox.home / "logs" / "echo.log").read_text()
    assert (sandbox.home / "logs" / "nats.log").exists()
    assert (sandbox.home / "nats" / "jetstream").is_dir()

    status = sandbox.gallery("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("healthy") == 2 and "unhealthy" not in status.stdout

    again = sandbox.gallery("up", "--detach")
    assert again.returncode == 1
    assert "already running" in again.stderr and "gallery down" in again.stderr
    assert sandbox.stack()["processes"] == list(records.values()), "a refused up must not touch the record"

    down = sandbox.gallery("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert down.stdout.count("stopped") == 2
    assert pids_gone([r["pid"] for r in records.values()])
    assert not (sandbox.home / "run" / "stack.json").exists()

    after = sandbox.gallery("status")
    assert after.returncode == 1
    assert "no stack recorded" in after.stdout


def test_status_reports_a_dead_process(sandbox: Sandbox) -> None:
    assert sandbox.gallery("up", "--detach").returncode == 0
    echo = next(p for p in sandbox.stack()["processes"] if p["name"] == "echo")
    os.kill(echo["pid"], signal.SIGKILL)
    assert pids_gone([echo["pid"]])

    status = sandbox.gallery("status", "--json")
    assert status.returncode == 1
    by_name = {row["name"]: row for row in json.loads(status.stdout)}
    assert by_name["echo"]["alive"] is False and by_name["nats"]["healthy"] is True

    # The dead service does not count as a running stack, but nats-server still does.
    assert "already running" in sandbox.gallery("up", "--detach").stderr
    assert "not running" in sandbox.gallery("down").stdout


def start_foreground(sandbox: Sandbox) -> subprocess.Popen[str]:
    """`gallery up` without --detach, returned once `gallery status` calls the stack healthy."""
    proc = subprocess.Popen(
        [str(GALLERY), "up", "--only", "echo"],
        env=sandbox.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while sandbox.gallery("status").returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"foreground up never became healthy: {proc.communicate()[0]}")
        time.sleep(0.2)
    return proc


def test_foreground_up_stops_everything_on_ctrl_c(sandbox: Sandbox) -> None:
    proc = start_foreground(sandbox)
    try:
        pids = [p["pid"] for p in sandbox.stack()["processes"]]
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert pids_gone(pids)
    assert not (sandbox.home / "run" / "stack.json").exists()
    assert out.count("stopped") == 2


def test_foreground_up_returns_when_down_runs_elsewhere(sandbox: Sandbox) -> None:
    proc = start_foreground(sandbox)
    try:
        assert sandbox.gallery("down").returncode == 0
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "stopped by `gallery down`" in out


def test_up_fails_clearly_when_a_service_cannot_start(tmp_path: Path) -> None:
    box = make_sandbox(tmp_path, BROKEN_APP)
    up = box.gallery("up", "--detach", "--timeout", "20")
    assert up.returncode == 1
    assert "echo failed: exited with code" in up.stderr
    assert "echo cannot start: no weights" in up.stderr, "the tail of the service's log is shown"
    assert not (box.home / "run" / "stack.json").exists()
    assert box.gallery("status").returncode == 1


def test_up_refuses_a_service_that_is_not_installed(sandbox: Sandbox) -> None:
    refused = subprocess.run(
        [str(GALLERY), "up", "--detach", "--only", "nonesuch"], env=sandbox.env, capture_output=True, text=True
    )
    assert refused.returncode == 1
    assert "not installed: nonesuch" in refused.stderr
    assert not (sandbox.home / "run" / "stack.json").exists()
