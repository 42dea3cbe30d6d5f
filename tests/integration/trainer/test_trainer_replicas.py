"""Two trainer processes compete for jobs on the TRAIN_JOBS work queue of a real nats-server with the
stack's NATS users, over one SQLite database: a job submitted to either runs once; GET on either shows
who holds it; a cancel sent to the other replica reaches it; SIGKILL of the replica that runs a job
hands the job to the other, which runs it from the start and publishes one `model.trained`.

Training is a paced stand-in (trainer_replica_proc.py) so the kill lands mid-job in a second or two;
real training of a replicated trainer, with the registry, is in tests/chaos.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from trainer_harness import FINAL, iris_spec

from gallery_cli.stack import stack_authorization
from gallery_common.bus import EventBus
from gallery_common.events import ModelTrained
from gallery_common.nats_auth import NatsCredentials, password_path
from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port

ACK_WAIT_S = 2.0
PROC = Path(__file__).with_name("trainer_replica_proc.py")


@dataclass
class Replica:
    name: str
    process: subprocess.Popen[bytes]
    client: httpx.Client
    log: Path

    def holds(self, job: dict[str, Any]) -> bool:
        return (job.get("holder") or "").endswith(f":{self.process.pid}")


@dataclass
class Replicas:
    home: Path
    nats_url: str
    running: dict[str, Replica] = field(default_factory=dict)

    def start(self, name: str) -> Replica:
        port = free_port()
        log = self.home / f"trainer-{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GALLERY_")}
        env.update(
            GALLERY_HOME=str(self.home),  # one database (trainer.db) and one NATS user for both
            GALLERY_NATS_URL=self.nats_url,
            GALLERY_SERVICE_NAME="trainer",
            GALLERY_PORT=str(port),
            GALLERY_JOBS_DIR=str(self.home / f"jobs-{name}"),
            GALLERY_JOB_ACK_WAIT_S=str(ACK_WAIT_S),
            GALLERY_PROGRESS_INTERVAL="0.1",
        )
        with open(log, "ab") as out:
            process = subprocess.Popen([sys.executable, str(PROC)], env=env, stdout=out, stderr=subprocess.STDOUT)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        replica = Replica(name, process, client, log)
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"replica {name} exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"replica {name} not ready: {log.read_text()[-2000:]}"
            try:
                if client.get("/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.running[name] = replica
        return replica

    def ensure(self, *names: str) -> list[Replica]:
        return [
            self.running[n] if self.running.get(n) and self.running[n].process.poll() is None else self.start(n)
            for n in names
        ]

    def stop(self) -> None:
        for replica in self.running.values():
            replica.process.terminate()
        for replica in self.running.values():
            try:
                replica.process.wait(30)
            except subprocess.TimeoutExpired:
                replica.process.kill()
            replica.client.close()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    home = tmp_path_factory.mktemp("replicas")
    with EmbeddedNats(home / "nats", log_file=home / "nats.log", authorization=stack_authorization(home, [])) as nats:
        cluster = Replicas(home, nats.url)
        try:
            yield cluster
        finally:
            cluster.stop()


def wait_for(client: httpx.Client, job_id: str, done: Any, timeout: float = 60, what: str = "") -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        if done(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} never {what}: {job}"
        time.sleep(0.05)


def trained_ids(replicas: Replicas, prefix: str, count: int, timeout: float = 20) -> list[str]:
    """The ids of the model.trained events of the jobs named `prefix`*, once `count` are stored (read as
    the CLI's NATS user), after a moment in which a duplicate would have shown up."""

    async def stored() -> list[str]:
        password = password_path(replicas.home, "cli").read_text().strip()
        async with EventBus(replicas.nats_url, "test", credentials=NatsCredentials("cli", password)) as bus:
            events = await bus.stored_events()
        return [e.id for e in events if isinstance(e.data, ModelTrained) and e.data.model.startswith(prefix)]

    deadline = time.monotonic() + timeout
    while len(asyncio.run(stored())) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    return asyncio.run(stored())


def test_jobs_submitted_to_either_replica_run_once_on_one_of_them(replicas: Replicas) -> None:
    a, b = replicas.ensure("a", "b")
    submitted = [
        (a if n % 2 else b).client.post("/api/v1/jobs", json=iris_spec(f"spread-{n}", epochs=2)).json()
        for n in range(6)
    ]
    ended = [wait_for(a.client, job["id"], lambda j: j["status"] in FINAL, what="ended") for job in submitted]
    assert [job["status"] for job in ended] == ["succeeded"] * 6, ended
    assert all(job["attempts"] == 1 for job in ended), "no job ran twice"
    holders = {job["holder"] for job in ended}
    assert any(a.holds(job) for job in ended) and any(b.holds(job) for job in ended), holders
    assert b.client.get(f"/api/v1/jobs/{ended[0]['id']}").json() == ended[0], "either replica shows any job"
    ids = trained_ids(replicas, "spread-", 6)
    assert sorted(ids) == sorted(f"trained:{job['id']}" for job in submitted), "one model.trained per job"


def test_a_cancel_sent_to_the_other_replica_stops_the_job(replicas: Replicas) -> None:
    a, b = replicas.ensure("a", "b")
    job = a.client.post("/api/v1/jobs", json=iris_spec("cancelled-elsewhere", epochs=500)).json()
    running = wait_for(a.client, job["id"], lambda j: j["epoch"] >= 1, what="trained an epoch")
    other = b if a.holds(running) else a
    assert other.client.post(f"/api/v1/jobs/{job['id']}/cancel").json()["cancel_requested"]
    cancelled = wait_for(other.client, job["id"], lambda j: j["status"] in FINAL, timeout=10, what="ended")
    assert cancelled["status"] == "cancelled" and cancelled["epoch"] < 500


def test_a_job_whose_replica_is_killed_is_finished_by_the_other_once(replicas: Replicas) -> None:
    a, b = replicas.ensure("a", "b")
    job = b.client.post("/api/v1/jobs", json=iris_spec("survives-a-kill", epochs=10)).json()
    running = wait_for(b.client, job["id"], lambda j: j["epoch"] >= 2, what="trained two epochs")
    victim, survivor = (a, b) if a.holds(running) else (b, a)
    seen = survivor.client.get(f"/api/v1/jobs/{job['id']}").json()
    assert seen["holder"] == running["holder"] and seen["heartbeat_at"], "the survivor sees who runs it"

    victim.process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    victim.process.wait(10)
    taken = wait_for(survivor.client, job["id"], lambda j: survivor.holds(j), timeout=30, what="taken over")
    takeover_s = time.monotonic() - killed_at
    assert taken["attempts"] == 2 and taken["status"] == "running"
    assert takeover_s < ACK_WAIT_S + 8, f"taken over {takeover_s:.1f}s after the kill (ack wait {ACK_WAIT_S}s)"

    done = wait_for(survivor.client, job["id"], lambda j: j["status"] in FINAL, what="ended")
    assert done["status"] == "succeeded" and done["epoch"] == 10 and done["attempts"] == 2
    first_run = survivor.client.get(f"/api/v1/runs/{running['run_id']}").json()
    assert first_run["status"] == "failed" and "taken over" in first_run["error"]
    assert trained_ids(replicas, "survives-a-kill", 1) == [f"trained:{job['id']}"], "published once"
    print(f"taken over {takeover_s:.2f}s after SIGKILL (GALLERY_JOB_ACK_WAIT_S={ACK_WAIT_S})")
