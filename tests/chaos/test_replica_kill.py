"""SIGKILL of a replica on the full embedded stack (every service a process, two trainers, two
optimizers, two deployers, two monitors) while the lifecycle runs: the trainer or optimizer running a
job, the deployer leader mid-rollout, the monitor leader mid-episode. The survivor finishes the work,
once.

The scenarios share one stack (module-scoped). The first trains `chaos-iris` for real; the others take
its `model.trained` under a model name of their own through the gate, so each starts from a real
`model.validated`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import psutil
import pytest
import yaml
from chaos_figures import Figures
from lifecycle_stack import LifecycleStack
from replicated_stack import (
    JOB_ACK_WAIT_S,
    LEADER_TTL_S,
    MONITOR_WINDOW_S,
    artifacts_dir,
    events_of,
    kill,
    leader_key,
    replica_key,
    start_deployer,
    start_monitor,
    start_replicated,
    versions,
)
from waiting import wait_for

from gallery_cli.stack import stack_authorization
from gallery_common.artifacts.partial_writes import TEMP_PREFIX
from gallery_common.events import ModelTrained
from gallery_common.nats_server import EmbeddedNats

REPO = Path(__file__).resolve().parents[2]
TRAINED = "chaos-iris"
FINAL = ("succeeded", "failed", "cancelled")
TAKEOVER_BOUND_S = 10.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LifecycleStack]:
    home = tmp_path_factory.mktemp("replicas") / "home"
    authorization = stack_authorization(home, [])
    with EmbeddedNats(home / "nats", log_file=home / "nats.log", authorization=authorization) as nats_server:
        running = LifecycleStack(home=home, nats_url=nats_server.url)
        try:
            start_replicated(running)
            yield running
        finally:
            running.stop()


def iris_spec(epochs: int) -> dict[str, Any]:
    spec = yaml.safe_load((REPO / "examples" / "iris.yaml").read_text())
    spec["name"] = TRAINED
    spec["training"]["epochs"] = epochs
    return spec  # type: ignore[no-any-return]


def job(stack: LifecycleStack, key: str, job_id: str) -> dict[str, Any]:
    return httpx.get(f"{stack.services[key].url}/api/v1/jobs/{job_id}", timeout=10).json()  # type: ignore[no-any-return]


def orphans_of(folder: Path) -> list[psutil.Process]:
    """Live processes started for work in `folder` (a killed replica's ranks, model servers...)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(folder) in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def test_trainer_replica_killed_mid_training(stack: LifecycleStack, figures: Figures) -> None:
    """SIGKILL of the trainer replica running a job, mid-training"""
    submitted = httpx.post(f"{stack.services['trainer'].url}/api/v1/jobs", json=iris_spec(epochs=60), timeout=30)
    assert submitted.status_code in (201, 202), submitted.text
    job_id = submitted.json()["id"]
    running = wait_for(
        "the job training",
        lambda: (j := job(stack, "trainer", job_id))["status"] == "running" and j["epoch"] >= 1 and j,
        timeout=120,
        interval=0.1,
    )
    victim = replica_key(stack, "trainer", running["holder"])
    assert victim is not None, running
    survivor = "trainer-b" if victim == "trainer" else "trainer"
    victim_jobs = stack.home / f"trainer{'-b' if victim == 'trainer-b' else '-a'}"
    killed = kill(stack, victim)
    taken = wait_for(
        "the survivor running the job",
        lambda: (j := job(stack, survivor, job_id))["status"] == "running" and j["attempts"] == 2 and j,
        timeout=60,
        interval=0.1,
    )
    running_again = time.monotonic() - killed
    assert replica_key(stack, "trainer", taken["holder"]) == survivor
    # what the killed replica started for the job dies with it: its launcher gets SIGTERM from the kernel
    # (die_with_parent) and stops its ranks
    wait_for("the killed replica's launcher and ranks gone", lambda: not orphans_of(victim_jobs), timeout=30)
    left = orphans_of(victim_jobs)
    orphans_gone = time.monotonic() - killed
    done = wait_for(
        "the job ended", lambda: (j := job(stack, survivor, job_id))["status"] in FINAL and j, timeout=120, interval=0.2
    )
    assert done["status"] == "succeeded", done
    trained = wait_for("model.trained", lambda: events_of(stack, "trained", model=TRAINED), timeout=30)
    trained_after = time.monotonic() - killed
    judged = wait_for(
        "the version judged",
        lambda: [v for v in versions(stack, TRAINED) if v["status"] in {"validated", "rejected"}],
        timeout=60,
    )
    time.sleep(2.0)  # a second model.trained or version would show up here
    trained = events_of(stack, "trained", model=TRAINED)
    registered = versions(stack, TRAINED)
    figures.update(
        job_ack_wait_s=float(JOB_ACK_WAIT_S),
        killed_at_epoch=running["epoch"],
        running_again_after_kill_s=round(running_again, 1),
        model_trained_after_kill_s=round(trained_after, 1),
        attempts=done["attempts"],
        model_trained_events=len(trained),
        registry_versions=len(registered),
        orphaned_rank_processes=len(left),
        launcher_and_ranks_gone_after_kill_s=round(orphans_gone, 1),
    )
    assert [e.id for e in trained] == [f"trained:{job_id}"]
    assert len(registered) == 1 and judged[0]["status"] == "validated"


@pytest.fixture(scope="module")
def trained(stack: LifecycleStack) -> ModelTrained:
    """chaos-iris's model.trained (the trainer scenario's, or one trained here when it did not run)."""
    found = events_of(stack, "trained", model=TRAINED)
    if not found:
        answer = httpx.post(f"{stack.services['trainer'].url}/api/v1/jobs", json=iris_spec(epochs=30), timeout=30)
        assert answer.status_code == 202, answer.text
        found = wait_for("chaos-iris trained", lambda: events_of(stack, "trained", model=TRAINED), timeout=180)
    return found[0].data  # type: ignore[no-any-return]


def train_as(stack: LifecycleStack, trained: ModelTrained, model: str) -> None:
    """Publish chaos-iris's model.trained again as a run of `model` (as the trainer's NATS user)."""
    run_id = f"chaos-{uuid.uuid4().hex[:8]}"

    async def publish() -> None:
        async with stack.bus("trainer") as bus:
            await bus.publish(
                trained.model_copy(update={"model": model, "run_id": run_id}), event_id=f"trained:{run_id}"
            )

    asyncio.run(publish())


def refs_in(value: Any) -> dict[str, str]:
    """Every artifact reference (uri -> sha256) anywhere in a JSON document."""
    found: dict[str, str] = {}
    if isinstance(value, dict):
        if isinstance(value.get("uri"), str) and isinstance(value.get("sha256"), str):
            found[value["uri"]] = value["sha256"]
        for item in value.values():
            found.update(refs_in(item))
    elif isinstance(value, list):
        for item in value:
            found.update(refs_in(item))
    return found


def test_optimizer_replica_killed_while_it_stores_its_outputs(
    stack: LifecycleStack, trained: ModelTrained, figures: Figures
) -> None:
    """SIGKILL of the optimizer replica running a job, as its outputs are stored"""
    model = "chaos-optimize"
    outputs = artifacts_dir(stack) / "optimized" / model / "1"
    train_as(stack, trained, model)

    def optimization() -> dict[str, Any] | None:
        """The model's job as a live optimizer replica reports it (the shared database: any one will do)."""
        live = next(service for key, service in stack.services.items() if key.startswith("optimizer"))
        jobs = httpx.get(f"{live.url}/api/v1/optimize", params={"model": model}, timeout=10)
        return next(iter(jobs.json()), None)

    running = wait_for(
        "the optimization running", lambda: (j := optimization()) and j["status"] == "running" and j, 120, 0.1
    )
    victim = replica_key(stack, "optimizer", running["holder"])
    assert victim is not None, running
    survivor = "optimizer-b" if victim == "optimizer" else "optimizer"
    # kill it the moment its first output appears under the version's folder (mid-upload)
    deadline = time.monotonic() + 120
    while not outputs.exists():
        assert time.monotonic() < deadline, "no output stored"
        time.sleep(0.005)
    killed = kill(stack, victim)
    at_kill = sorted(p.name for p in outputs.iterdir())
    status_at_kill = httpx.get(f"{stack.services[survivor].url}/api/v1/optimize/{running['id']}", timeout=10).json()
    assert status_at_kill["status"] == "running", "the job had ended before the kill"
    taken = wait_for(
        "the survivor running the job",
        lambda: (j := optimization()) and j["attempts"] == 2 and j["status"] == "running" and j,
        timeout=60,
        interval=0.1,
    )
    running_again = time.monotonic() - killed
    assert replica_key(stack, "optimizer", taken["holder"]) == survivor
    done = wait_for("the job ended", lambda: (j := optimization()) and j["status"] in FINAL and j, 180, 0.2)
    optimized = wait_for("model.optimized", lambda: events_of(stack, "optimized", model=model, version=1), 30)
    optimized_after = time.monotonic() - killed
    time.sleep(2.0)  # a second model.optimized would show up here
    optimized = events_of(stack, "optimized", model=model, version=1)
    referenced = refs_in(optimized[0].data.model_dump(mode="json")) | refs_in(done["report"])
    files = {p.as_uri(): p for p in outputs.rglob("*") if p.is_file()}
    temp_files = [p for p in files.values() if p.name.startswith(TEMP_PREFIX)]
    unreferenced = [uri for uri in files if uri not in referenced]
    not_whole = [
        uri
        for uri, path in files.items()
        if uri in referenced and hashlib.sha256(path.read_bytes()).hexdigest() != referenced[uri]
    ]
    missing = [uri for uri in referenced if uri.startswith(outputs.as_uri()) and uri not in files]
    figures.update(
        job_ack_wait_s=float(JOB_ACK_WAIT_S),
        killed_in_step=status_at_kill["step"],
        outputs_at_kill=len(at_kill),
        running_again_after_kill_s=round(running_again, 1),
        model_optimized_after_kill_s=round(optimized_after, 1),
        attempts=done["attempts"],
        model_optimized_events=len(optimized),
        stored_outputs=len(files),
        partial_or_temp_files=len(temp_files) + len(not_whole),
        unreferenced_files=len(unreferenced),
    )
    assert done["status"] == "succeeded", done
    assert [e.id for e in optimized] == [f"optimized:{model}:1"]
    assert not temp_files and not not_whole and not missing, (temp_files, not_whole, missing)
    assert not unreferenced, f"outputs no report or event leads to: {unreferenced}"


def iris_rows(count: int, shift: float = 0.0) -> list[float]:
    rows = np.random.default_rng(7).normal(loc=[5.8, 3.0, 3.8, 1.2], scale=[0.8, 0.4, 1.7, 0.7], size=(count, 4))
    rows[:, 2] += shift
    return rows.astype(np.float32).ravel().tolist()  # type: ignore[no-any-return]


def infer(stack: LifecycleStack, model: str, rows: int = 1, shift: float = 0.0) -> httpx.Response:
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [rows, 4], "data": iris_rows(rows, shift)}]}
    return httpx.post(
        f"{stack.services['gateway'].url}/v2/models/{model}/infer", content=orjson.dumps(body), timeout=30
    )


def model_servers(model: str, sha256: str) -> int:
    """Live model server processes serving `model` from the artifact `sha256`, whoever started them (the
    scenarios register one trained artifact under several names, so the artifact alone does not tell)."""
    return sum(
        1
        for process in psutil.process_iter(["cmdline"])
        if "gallery_deployer.modelserver" in (cmdline := process.info["cmdline"] or [])
        and sha256 in cmdline
        and model == _argument(cmdline, "--model")
    )


def _argument(cmdline: list[str], name: str) -> str | None:
    return cmdline[cmdline.index(name) + 1] if name in cmdline[:-1] else None


def test_deployer_leader_killed_mid_rollout(stack: LifecycleStack, trained: ModelTrained, figures: Figures) -> None:
    """SIGKILL of the deployer leader mid-rollout (its model server starting)"""
    model = "chaos-deploy"
    leader = wait_for("a deployer leading", lambda: leader_key(stack, "deployer"), 30)
    follower = "deployer-b" if leader == "deployer" else "deployer"
    first_term = httpx.get(f"{stack.services[leader].url}/leader", timeout=5).json()["term"]
    server_logs = stack.home / "deployer" / "logs" / f"{model}-v1"
    train_as(stack, trained, model)
    deadline = time.monotonic() + 120
    while not any(server_logs.glob("*")):
        assert time.monotonic() < deadline, "the leader never started a model server"
        time.sleep(0.01)
    killed = kill(stack, leader)
    follower_url = stack.services[follower].url
    wait_for("the follower leading", lambda: httpx.get(f"{follower_url}/leader", timeout=5).json()["leader"], 20, 0.05)
    takeover = time.monotonic() - killed
    deployed = wait_for("model.deployed", lambda: events_of(stack, "deployed", model=model, version=1), 90)
    deployed_after = time.monotonic() - killed
    served = wait_for(
        "the gateway serving it",
        lambda: (a := infer(stack, model)).status_code == 200 and a.json()["model_version"] == "1",
        30,
        ignore=(httpx.HTTPError,),
    )
    served_after = time.monotonic() - killed
    time.sleep(2.0)  # a second model.deployed or model server would show up here
    first = deployed[0].data
    same = [e for e in events_of(stack, "deployed", model=model, version=1) if e.data.variant == first.variant]
    [record] = [
        d for d in httpx.get(f"{follower_url}/api/v1/deployments/{model}", timeout=10).json() if d["version"] == 1
    ]
    servers = model_servers(model, record["artifact"]["sha256"])
    # the killed leader back as a follower: the stack has two deployers again
    start_deployer(stack, "" if leader == "deployer" else "-b")
    figures.update(
        leader_ttl_s=float(LEADER_TTL_S),
        takeover_after_kill_s=round(takeover, 1),
        model_deployed_after_kill_s=round(deployed_after, 1),
        gateway_serves_after_kill_s=round(served_after, 1),
        model_deployed_events=len(same),
        replica_slots=record["desired_replicas"],
        model_servers=servers,
    )
    assert takeover < TAKEOVER_BOUND_S and served
    assert [(e.data.stage, e.leaderterm > first_term) for e in same] == [("production", True)], same
    assert record["state"] == "ready" and len(record["replicas"]) == record["desired_replicas"] == servers


def test_monitor_leader_killed_mid_episode(stack: LifecycleStack, trained: ModelTrained, figures: Figures) -> None:
    """SIGKILL of the monitor leader mid-episode (drift)"""
    model = "chaos-deploy"
    if not events_of(stack, "deployed", model=model, version=1):  # the deployer scenario did not run
        train_as(stack, trained, model)
        wait_for(
            "chaos-deploy served", lambda: infer(stack, model).status_code == 200, 120, 1.0, ignore=(httpx.HTTPError,)
        )
    leader = wait_for("a monitor leading", lambda: leader_key(stack, "monitor"), 30)
    follower = stack.services["monitor-b" if leader == "monitor" else "monitor"].url

    def drift(until: Any, timeout: float, what: str) -> Any:
        """Shifted inputs (petal length 4 standard deviations off) through the gateway until `until()`."""
        deadline = time.monotonic() + timeout
        while not (answer := until()):
            assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
            infer(stack, model, rows=30, shift=7.0)
            time.sleep(0.2)
        return answer

    def degraded() -> list[Any]:
        return [e for e in events_of(stack, "degraded", model=model, version=1) if e.data.kind == "drift"]

    started = time.monotonic()
    drift(degraded, 90, "model.degraded from the leader")
    first_alert = time.monotonic() - started
    killed = kill(stack, leader)
    drift(lambda: httpx.get(f"{follower}/leader", timeout=5).json()["leader"], TAKEOVER_BOUND_S, "the follower leading")
    takeover = time.monotonic() - killed
    # the new leader judges the same drift for two more windows: the episode stays open, no second alert
    until = time.monotonic() + 2 * float(MONITOR_WINDOW_S)
    drift(lambda: time.monotonic() > until, 60, "two windows")
    still = httpx.get(f"{follower}/api/v1/models/{model}/drift", timeout=10).json()
    alerts = httpx.get(f"{follower}/api/v1/alerts", params={"model": model, "open": "true"}, timeout=10).json()
    start_monitor(stack, "" if leader == "monitor" else "-b")
    events = degraded()
    figures.update(
        leader_ttl_s=float(LEADER_TTL_S),
        window_s=float(MONITOR_WINDOW_S),
        first_alert_s=round(first_alert, 1),
        takeover_after_kill_s=round(takeover, 1),
        drifted_after_takeover=still["drifted"],
        model_degraded_events=len(events),
        open_alerts=len(alerts),
    )
    assert still["drifted"], still
    assert [e.id for e in events] == [f"degraded:{model}:1:drift:1"]
    assert len(alerts) == 1 and alerts[0]["event_id"] == events[0].id
