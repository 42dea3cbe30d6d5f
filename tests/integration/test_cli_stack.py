"""`gallery up` / `status` / `down` as a user runs them: real nats-server and a real service process
(a tiny one installed by `cli_sandbox`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from cli_sandbox import BROKEN_APP, GALLERY, Sandbox, make_sandbox, pids_gone, start_foreground


def test_up_detach_status_down(sandbox: Sandbox) -> None:
    sandbox.env["GALLERY_HOST"] = "0.0.0.0"  # without API tokens this must still mean loopback only
    up = sandbox.gallery("up", "--detach")
    assert up.returncode == 0, up.stdout + up.stderr
    records = {p["name"]: p for p in sandbox.stack()["processes"]}
    assert set(records) == {"supervisor", "nats", "echo"}
    for name, record in records.items():
        assert name in up.stdout and str(record["pid"]) in up.stdout
    assert "restarts what exits" in up.stdout
    assert "the stack is up" in (sandbox.home / "logs" / "supervisor.log").read_text()
    assert f"http://127.0.0.1:{sandbox.service_port}" in up.stdout
    assert records["nats"]["url"] == f"nats://127.0.0.1:{sandbox.nats_port}"
    assert "echo binds to 127.0.0.1 only" in (sandbox.home / "logs" / "echo.log").read_text()
    assert (sandbox.home / "logs" / "nats.log").exists()
    assert (sandbox.home / "nats" / "jetstream").is_dir()

    status = sandbox.gallery("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("healthy") == 3 and "unhealthy" not in status.stdout

    again = sandbox.gallery("up", "--detach")
    assert again.returncode == 1
    assert "already running" in again.stderr and "gallery down" in again.stderr
    assert sandbox.stack()["processes"] == list(records.values()), "a refused up must not touch the record"

    down = sandbox.gallery("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert down.stdout.count("stopped") == 3
    assert pids_gone([r["pid"] for r in records.values()])
    assert not (sandbox.home / "run" / "stack.json").exists()

    after = sandbox.gallery("status")
    assert after.returncode == 1
    assert "no stack recorded" in after.stdout


def test_status_reports_a_dead_process_once_nothing_supervises_it(sandbox: Sandbox) -> None:
    assert sandbox.gallery("up", "--detach").returncode == 0
    processes = {p["name"]: p for p in sandbox.stack()["processes"]}
    os.kill(processes["supervisor"]["pid"], signal.SIGKILL)
    os.kill(processes["echo"]["pid"], signal.SIGKILL)
    assert pids_gone([processes["supervisor"]["pid"], processes["echo"]["pid"]])

    status = sandbox.gallery("status", "--json")
    assert status.returncode == 1
    by_name = {row["name"]: row for row in json.loads(status.stdout)}
    assert by_name["echo"]["alive"] is False and by_name["nats"]["healthy"] is True

    # The dead service does not count as a running stack, but nats-server still does.
    assert "already running" in sandbox.gallery("up", "--detach").stderr
    assert "not running" in sandbox.gallery("down").stdout


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
