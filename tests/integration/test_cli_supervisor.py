"""The stack heals itself: SIGKILL a service or nats-server of `gallery up` and it is back, nats-server on
the same store; a handler killed mid-work gets its event again and does it once; a crash
loop stops and says why. Real nats-server, real service processes (`cli_sandbox`'s tiny service).

How fast it heals (the 5 s target) is measured by `bench/heal.py`, not here: under a loaded test run
the heal and the `gallery status` calls that watch it share two cores with other tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from cli_sandbox import Sandbox, make_sandbox, pids_gone, start_foreground
from waiting import wait_for

from gallery_common.bus import EventBus
from gallery_common.events import ModelDeploymentFailed
from gallery_common.nats_auth import NatsCredentials, password_path

# A service with a real consumer: each delivery is counted, the effect applied once; the first delivery
# of an event hangs (the handler heartbeats, as long work does) until the process is killed.
CONSUMER_APP = """import asyncio, os, sqlite3
    from pathlib import Path
    from gallery_common.app import create_app
    from gallery_common.events import Payload
    from gallery_common.router import EventRouter
    from gallery_common.settings import load_settings

    home = Path(os.environ["GALLERY_HOME"])

    def db():
        conn = sqlite3.connect(home / "effects.db")
        conn.execute("CREATE TABLE IF NOT EXISTS deliveries (event_id TEXT, pid INTEGER)")
        conn.execute("CREATE TABLE IF NOT EXISTS effects (event_id TEXT PRIMARY KEY)")
        return conn

    events = EventRouter("echo", ack_wait=2.0, backoff=(0.5,))

    @events.on(Payload)
    async def handle(data, event):
        with db() as conn:
            conn.execute("INSERT INTO deliveries VALUES (?, ?)", (event.id, os.getpid()))
            first = conn.execute("SELECT count(*) FROM deliveries WHERE event_id = ?", (event.id,)).fetchone()[0] == 1
        if first and (home / "hang").exists():
            await asyncio.sleep(3600)
        with db() as conn:
            conn.execute("INSERT OR IGNORE INTO effects VALUES (?)", (event.id,))

    async def startup(resources, stack):
        await stack.enter_async_context(events.consumer(resources.bus))

    return create_app(load_settings(), title="echo", startup=startup)"""

# Starts once; every later start (a restart) dies at once, as a service with a broken upgrade would.
CRASHING_APP = """import os
    from pathlib import Path
    from gallery_common.app import create_app
    from gallery_common.settings import load_settings

    started = Path(os.environ["GALLERY_HOME"]) / "started-once"
    if started.exists():
        raise RuntimeError("echo cannot start: the schema moved on")
    started.touch()
    return create_app(load_settings(), title="echo")"""


def processes(box: Sandbox) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in box.stack()["processes"]}


def status_json(box: Sandbox) -> tuple[int, dict[str, dict[str, Any]]]:
    done = box.gallery("status", "--json")
    return done.returncode, {row["name"]: row for row in json.loads(done.stdout or "[]")}


def kill_and_wait_for_the_heal(box: Sandbox, name: str) -> dict[str, Any]:
    """SIGKILL `name`; return its `gallery status` row once that calls every process healthy again."""
    old = processes(box)[name]
    os.kill(old["pid"], signal.SIGKILL)
    assert pids_gone([old["pid"]])

    def healed() -> dict[str, Any] | None:
        code, rows = status_json(box)
        return rows[name] if code == 0 and rows[name]["pid"] != old["pid"] else None

    return wait_for(f"{name} healthy again", healed, timeout=30)


def bus_as(box: Sandbox, user: str) -> EventBus:
    """A connection as one of the stack's NATS users (`gallery up` made their passwords under its home)."""
    password = password_path(box.home, user).read_text().strip()
    return EventBus(f"nats://127.0.0.1:{box.nats_port}", f"test-{user}", credentials=NatsCredentials(user, password))


async def publish_events(box: Sandbox, versions: range) -> None:
    # model.deployment_failed: only the deployer may publish it
    async with bus_as(box, "deployer") as bus:
        for version in versions:
            await bus.publish(ModelDeploymentFailed(model="healing", version=version, reason="a test event"))


async def stored_versions(box: Sandbox) -> list[int]:
    async with bus_as(box, "cli") as bus:
        info = await bus.js.stream_info("MODEL_EVENTS")
        return [
            json.loads((await bus.js.get_msg("MODEL_EVENTS", seq)).data)["data"]["version"]
            for seq in range(max(info.state.first_seq, 1), info.state.last_seq + 1)
        ]


def effects(box: Sandbox) -> tuple[int, dict[str, int]]:
    """(events whose effect was applied, deliveries per event id)."""
    if not (box.home / "effects.db").exists():
        return 0, {}
    with sqlite3.connect(box.home / "effects.db") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS deliveries (event_id TEXT, pid INTEGER)")
        conn.execute("CREATE TABLE IF NOT EXISTS effects (event_id TEXT PRIMARY KEY)")
        applied = conn.execute("SELECT count(*) FROM effects").fetchone()[0]
        counts = dict(conn.execute("SELECT event_id, count(*) FROM deliveries GROUP BY event_id").fetchall())
    return applied, counts


@pytest.fixture
def consuming(tmp_path: Path) -> Any:
    box = make_sandbox(tmp_path, CONSUMER_APP)
    yield box
    box.gallery("down")


def test_a_killed_service_and_nats_server_are_back_and_no_event_is_lost(consuming: Sandbox) -> None:
    up = consuming.gallery("up", "--detach")
    assert up.returncode == 0, up.stdout + up.stderr
    asyncio.run(publish_events(consuming, range(1, 11)))

    for name in ("echo", "nats"):
        row = kill_and_wait_for_the_heal(consuming, name)
        assert row["restarts"] == 1 and row["last_exit"] == "killed by SIGKILL"

    # the same store: what was acknowledged before the kill is there, and the bus takes more
    asyncio.run(publish_events(consuming, range(11, 21)))
    assert asyncio.run(stored_versions(consuming)) == list(range(1, 21))
    # the restarted service, reconnected to the restarted server, handled every event once
    assert wait_for("every event handled", lambda: effects(consuming)[0] == 20, timeout=30)

    table = consuming.gallery("status")
    assert table.returncode == 0 and table.stdout.count("killed by SIGKILL") == 2, table.stdout
    log = (consuming.home / "logs" / "supervisor.log").read_text()
    assert "echo (pid" in log and "killed by SIGKILL; restarting in 0.5 s" in log


def test_a_handler_killed_mid_work_gets_its_event_again_and_does_it_once(consuming: Sandbox) -> None:
    (consuming.home).mkdir(parents=True, exist_ok=True)
    (consuming.home / "hang").touch()
    assert consuming.gallery("up", "--detach").returncode == 0
    asyncio.run(publish_events(consuming, range(1, 2)))
    wait_for("the first delivery", lambda: effects(consuming)[1], timeout=20)

    row = kill_and_wait_for_the_heal(consuming, "echo")
    applied, deliveries = wait_for(
        "the redelivery", lambda: effects(consuming) if effects(consuming)[0] else None, timeout=30
    )
    assert applied == 1 and list(deliveries.values()) == [2]
    with sqlite3.connect(consuming.home / "effects.db") as conn:
        pids = [pid for (pid,) in conn.execute("SELECT pid FROM deliveries")]
    assert pids[1] == row["pid"], "the restarted process finished the work"


def test_a_crash_loop_stops_and_says_why(tmp_path: Path) -> None:
    box = make_sandbox(tmp_path, CRASHING_APP)
    box.env.update(GALLERY_RESTART_LIMIT="2", GALLERY_RESTART_FIRST_DELAY_S="0.1")
    try:
        assert box.gallery("up", "--detach").returncode == 0
        os.kill(processes(box)["echo"]["pid"], signal.SIGKILL)
        failed = wait_for("the crash loop", lambda: processes(box)["echo"]["state"] == "failed", timeout=60)
        assert failed
        code, rows = status_json(box)
        echo = rows["echo"]
        assert code == 1 and echo["alive"] is False and echo["restarts"] == 2
        assert echo["last_exit"].startswith("crash loop: exited 3 times in 120 s, left stopped; last: exited with code")
        assert "echo cannot start: the schema moved on" in echo["last_exit"]
        assert rows["nats"]["healthy"] is True, "the rest of the stack runs on"
        assert "failed" in box.gallery("status").stdout
    finally:
        box.gallery("down")


def test_foreground_up_restarts_a_killed_service(sandbox: Sandbox) -> None:
    proc = start_foreground(sandbox)
    try:
        assert processes(sandbox)["supervisor"]["pid"] == proc.pid
        row = kill_and_wait_for_the_heal(sandbox, "echo")
        assert row["restarts"] == 1
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "echo (pid" in out and "killed by SIGKILL; restarting" in out and "echo restarted" in out
    assert pids_gone([row["pid"]])
