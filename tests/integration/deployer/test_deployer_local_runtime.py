"""The local runtime with real model-server processes serving a tiny ONNX model from a file:// store."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
from onnx import TensorProto, helper, numpy_helper

from gallery_common.errors import InvalidRequest, NotFound, Unavailable
from gallery_deployer.runtime import placement
from gallery_deployer.runtime.base import DeploymentStatus, RuntimeState, ServerSpec
from gallery_deployer.runtime.local import NO_GPU_FALLBACK, LocalOptions, LocalRuntime
from gallery_deployer.runtime.local_deployment import plan_step
from gallery_deployer.runtime.supervisor import spec_key

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
BIAS_A = np.array([0.5, -0.5, 0.0], np.float32)
BIAS_B = np.array([10.0, 20.0, 30.0], np.float32)
X = [[1.0, 2.0, 3.0, 4.0]]
BODY = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": X}]}
FAST = {
    "health_interval_s": 0.1,
    "drain_grace_s": 0.2,
    "drain_timeout_s": 10.0,
    "ready_timeout_s": 30.0,
    "restart_backoff_initial_s": 0.1,
}


def tiny_model(bias: np.ndarray) -> bytes:
    """logits = features @ W + bias, FP32 [-1, 4] → [-1, 3]."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["z"]), helper.make_node("Add", ["z", "B"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(bias, "B")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


@dataclass
class Stack:
    home: Path
    logs: Path

    def env(self) -> dict[str, str]:
        return {"GALLERY_HOME": str(self.home), "GALLERY_SERVE_NATS": "false", "GALLERY_API_TOKENS": ""}

    def artifact(self, name: str, bias: np.ndarray) -> tuple[str, str]:
        data = tiny_model(bias)
        path = self.home / "artifacts" / "models" / name / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path.as_uri(), hashlib.sha256(data).hexdigest()

    def spec(self, name: str = "a", bias: np.ndarray = BIAS_A, **fields: Any) -> ServerSpec:
        uri, sha256 = self.artifact(name, bias)
        base = {"deployment_id": "tiny-v1-fp32", "model": "tiny", "version": 1, "variant": "fp32"}
        return ServerSpec(**{**base, "artifact_uri": uri, "artifact_sha256": sha256, "intra_op_threads": 1, **fields})


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    return Stack(tmp_path / "home", tmp_path / "logs")


@pytest.fixture
async def runtimes(stack: Stack) -> AsyncIterator[Callable[..., LocalRuntime]]:
    made: list[LocalRuntime] = []

    def make(on_change: Callable[[DeploymentStatus], None] | None = None, **options: Any) -> LocalRuntime:
        env = {**stack.env(), "GALLERY_SERVICE_NAME": "deployer", "GALLERY_PORT": "8004"}  # the deployer's own
        runtime = LocalRuntime(LocalOptions(log_dir=stack.logs, **{**FAST, **options}), env, on_change)
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        await runtime.close()


def logits(response: httpx.Response) -> list[float]:
    assert response.status_code == 200, response.text
    return [float(v) for v in response.json()["outputs"][0]["data"]]


def expected(bias: np.ndarray) -> list[float]:
    return [float(v) for v in (np.array(X, np.float32) @ W + bias)[0]]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def until(check: Callable[[], Any], timeout: float = 20.0) -> None:
    """Poll `check` (sync, or returning an awaitable) until it is true."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def state_is(runtime: LocalRuntime, state: RuntimeState) -> bool:
    return (await runtime.status("tiny-v1-fp32")).state == state


async def no_endpoints(runtime: LocalRuntime) -> bool:
    return (await runtime.status("tiny-v1-fp32")).endpoints == ()


async def infer(url: str) -> list[float]:
    async with httpx.AsyncClient(timeout=10) as client:
        return logits(await client.post(url + "/v2/models/tiny/infer", json=BODY))


async def test_a_replica_serves_once_ready_and_close_leaves_no_process(runtimes, stack: Stack) -> None:
    seen: list[DeploymentStatus] = []
    runtime = runtimes(on_change=seen.append)
    await runtime.apply(stack.spec(env={"GALLERY_MAX_QUEUE": "7"}))
    await runtime.apply(stack.spec("other", deployment_id="other-v1-fp32"))

    status = await runtime.wait_ready("tiny-v1-fp32", 30)

    assert status.state == RuntimeState.ready and (status.desired, status.ready) == (1, 1)
    (endpoint,) = status.endpoints
    assert endpoint.startswith("http://127.0.0.1:")
    assert await infer(endpoint) == pytest.approx(expected(BIAS_A), rel=1e-5)
    assert [s.endpoints for s in seen if s.deployment_id == "tiny-v1-fp32"] == [(endpoint,)]
    (replica,) = status.replicas
    assert (stack.logs / "tiny-v1-fp32" / f"{replica.name}.log").read_text().count('"model_ready"') == 1
    assert (await runtime.wait_ready("other-v1-fp32", 30)).state == RuntimeState.ready
    pids = [*runtime.pids("tiny-v1-fp32").values(), *runtime.pids("other-v1-fp32").values()]
    assert len(pids) == 2 and not any(gone(pid) for pid in pids)
    env = psutil.Process(pids[0]).environ()
    assert (env["GALLERY_HOME"], env["GALLERY_MAX_QUEUE"]) == (str(stack.home), "7")
    assert "GALLERY_SERVICE_NAME" not in env and "GALLERY_PORT" not in env  # the deployer's own stay out

    await runtime.close()

    assert all(gone(pid) for pid in pids)
    with pytest.raises(Unavailable):
        await runtime.apply(stack.spec())


async def test_rolling_update_under_load_fails_no_request_and_switches_models(runtimes, stack: Stack) -> None:
    endpoints: list[str] = []
    during_update: list[tuple[str, ...]] = []
    updating = False

    def on_change(status: DeploymentStatus) -> None:
        endpoints[:] = status.endpoints
        if updating:
            during_update.append(status.endpoints)

    runtime = runtimes(on_change=on_change)
    await runtime.apply(stack.spec(replicas=2))
    assert (await runtime.wait_ready("tiny-v1-fp32", 30)).ready == 2
    old_pids = set(runtime.pids("tiny-v1-fp32").values())
    results: list[tuple[float, str | list[float]]] = []  # (when the endpoint was picked, answer or error)
    stop = asyncio.Event()

    async def load(worker: int) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            for i in range(worker, 10**9, 3):
                if stop.is_set():
                    return
                picked, url = time.monotonic(), endpoints[i % len(endpoints)]
                try:
                    response = await client.post(url + "/v2/models/tiny/infer", json=BODY)
                    results.append((picked, logits(response) if response.status_code == 200 else response.text))
                except httpx.HTTPError as exc:
                    results.append((picked, f"{type(exc).__name__}: {exc}"))
                await asyncio.sleep(0.01)

    workers = [asyncio.create_task(load(w)) for w in range(3)]
    await asyncio.sleep(0.3)
    updating = True
    await runtime.apply(stack.spec("b", BIAS_B, replicas=2))
    status = await runtime.wait_ready("tiny-v1-fp32", 60)
    switched = time.monotonic()
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*workers)

    assert status.state == RuntimeState.ready and status.ready == 2
    failures = [answer for _, answer in results if isinstance(answer, str)]
    assert failures == [] and len(results) > 50
    answers = [answer for _, answer in results]
    assert answers[0] == pytest.approx(expected(BIAS_A), rel=1e-5)
    after = [answer for picked, answer in results if picked > switched]
    assert after and all(a == pytest.approx(expected(BIAS_B), rel=1e-5) for a in after)
    assert min(len(e) for e in during_update) >= 2, during_update  # never fewer than the old count served
    assert set(status.endpoints) == set(endpoints) and all(gone(pid) for pid in old_pids)


async def test_a_killed_replica_is_restarted_and_ready_again(runtimes, stack: Stack) -> None:
    seen: list[tuple[str, ...]] = []
    runtime = runtimes(on_change=lambda status: seen.append(status.endpoints))
    await runtime.apply(stack.spec())
    (old_endpoint,) = (await runtime.wait_ready("tiny-v1-fp32", 30)).endpoints
    (pid,) = runtime.pids("tiny-v1-fp32").values()

    os.kill(pid, signal.SIGKILL)

    async def restarted() -> bool:
        status = await runtime.status("tiny-v1-fp32")
        return status.state == RuntimeState.ready and status.replicas[0].restarts == 1

    await until(restarted)
    status = await runtime.status("tiny-v1-fp32")
    (endpoint,) = status.endpoints
    assert list(runtime.pids("tiny-v1-fp32").values()) != [pid]
    assert await infer(endpoint) == pytest.approx(expected(BIAS_A), rel=1e-5)
    assert seen == [(old_endpoint,), (), (endpoint,)]


async def test_an_unresponsive_replica_is_taken_out_and_restarted(runtimes, stack: Stack) -> None:
    runtime = runtimes(unhealthy_after_s=1.0, probe_timeout_s=0.5)
    await runtime.apply(stack.spec())
    await runtime.wait_ready("tiny-v1-fp32", 30)
    (pid,) = runtime.pids("tiny-v1-fp32").values()

    os.kill(pid, signal.SIGSTOP)  # alive but answering nothing
    try:
        await until(lambda: no_endpoints(runtime), timeout=5)
        status = await runtime.wait_ready("tiny-v1-fp32", 30)
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)

    assert status.state == RuntimeState.ready and status.replicas[0].restarts == 1
    assert gone(pid)
    assert await infer(status.endpoints[0]) == pytest.approx(expected(BIAS_A), rel=1e-5)


async def test_a_wrong_sha256_fails_the_deployment_with_the_reason(runtimes, stack: Stack) -> None:
    seen: list[DeploymentStatus] = []
    runtime = runtimes(on_change=seen.append)
    await runtime.apply(replace(stack.spec(), artifact_sha256="0" * 64))

    status = await runtime.wait_ready("tiny-v1-fp32", 30)

    assert status.state == RuntimeState.failed
    assert "expected sha256 " + "0" * 64 in status.detail
    assert status.endpoints == () and runtime.pids("tiny-v1-fp32") == {} and seen == []
    assert status.replicas[0].restarts == 0  # a model that cannot load is not retried


async def test_a_rolling_update_to_a_bad_artifact_keeps_the_old_replica_serving(runtimes, stack: Stack) -> None:
    runtime = runtimes()
    good = stack.spec()
    await runtime.apply(good)
    (endpoint,) = (await runtime.wait_ready("tiny-v1-fp32", 30)).endpoints

    await runtime.apply(replace(stack.spec("b", BIAS_B), artifact_sha256="0" * 64))
    status = await runtime.wait_ready("tiny-v1-fp32", 30)

    assert status.state == RuntimeState.failed
    assert "rolling update to" in status.detail and "expected sha256" in status.detail
    assert good.artifact_uri in status.detail  # says what still serves
    assert status.endpoints == (endpoint,)
    assert await infer(endpoint) == pytest.approx(expected(BIAS_A), rel=1e-5)
    await runtime.apply(stack.spec("b", BIAS_B))  # a fixed spec rolls on
    assert (await runtime.wait_ready("tiny-v1-fp32", 30)).state == RuntimeState.ready


async def test_a_replica_crashing_past_max_restarts_fails_the_deployment(runtimes, stack: Stack) -> None:
    runtime = runtimes(max_restarts=2)
    spec = stack.spec("doomed")
    await runtime.apply(spec)
    await runtime.wait_ready("tiny-v1-fp32", 30)
    Path(spec.artifact_uri.removeprefix("file://")).unlink()  # every restart now fails to load

    os.kill(next(iter(runtime.pids("tiny-v1-fp32").values())), signal.SIGKILL)
    await until(lambda: state_is(runtime, RuntimeState.failed))
    status = await runtime.status("tiny-v1-fp32")

    assert status.state == RuntimeState.failed
    assert "crashed 3 times in a row" in status.detail and "doomed" in status.detail
    assert status.replicas[0].restarts == 2 and runtime.pids("tiny-v1-fp32") == {}


async def test_scale_down_to_zero_then_concurrent_wakes_share_one_start(runtimes, stack: Stack) -> None:
    runtime = runtimes()
    await runtime.apply(stack.spec(replicas=2))
    status = await runtime.wait_ready("tiny-v1-fp32", 30)
    first, second = (r.name for r in status.replicas)
    pids = runtime.pids("tiny-v1-fp32")

    status = await runtime.scale("tiny-v1-fp32", 1)
    assert (status.state, status.desired, status.ready) == (RuntimeState.ready, 1, 1)
    assert [r.name for r in status.replicas] == [first] and gone(pids[second])  # the newest went first

    status = await runtime.scale("tiny-v1-fp32", 0)
    assert status.state == RuntimeState.scaled_to_zero and status.replicas == () and status.endpoints == ()
    assert gone(pids[first]) and runtime.pids("tiny-v1-fp32") == {}

    woken = await asyncio.gather(runtime.wake("tiny-v1-fp32"), runtime.wake("tiny-v1-fp32"))
    assert woken[0] == woken[1] and woken[0].ready == 1 and woken[0].desired == 1
    assert len(runtime.pids("tiny-v1-fp32")) == 1
    assert await infer(woken[0].endpoints[0]) == pytest.approx(expected(BIAS_A), rel=1e-5)
    with pytest.raises(InvalidRequest):
        await runtime.scale("tiny-v1-fp32", -1)
    with pytest.raises(NotFound):
        await runtime.wake("nothing-here")
    with pytest.raises(InvalidRequest, match="DNS-1123"):
        await runtime.apply(stack.spec(deployment_id="../escape"))


async def test_an_idle_deployment_scales_to_zero_and_wakes(runtimes, stack: Stack) -> None:
    seen: list[tuple[str, ...]] = []
    runtime = runtimes(
        on_change=lambda status: seen.append(status.endpoints), idle_scale_to_zero_s=1.0, idle_check_s=0.2
    )
    await runtime.apply(stack.spec())
    (endpoint,) = (await runtime.wait_ready("tiny-v1-fp32", 30)).endpoints

    for _ in range(8):  # 2 s of traffic: twice the idle period, still up
        await infer(endpoint)
        await asyncio.sleep(0.25)
    assert (await runtime.status("tiny-v1-fp32")).state == RuntimeState.ready

    await until(lambda: state_is(runtime, RuntimeState.scaled_to_zero), timeout=5)
    await until(lambda: runtime.pids("tiny-v1-fp32") == {}, timeout=5)
    assert seen[-1] == ()

    status = await runtime.wake("tiny-v1-fp32")
    assert status.ready == 1 and seen[-1] == status.endpoints
    assert await infer(status.endpoints[0]) == pytest.approx(expected(BIAS_A), rel=1e-5)


async def test_gpu_replicas_get_the_planned_device_and_fall_back_to_cpu(
    runtimes, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpus = [placement.GpuDevice("node", 0, 16_000), placement.GpuDevice("node", 1, 16_000, used_mb=4_000)]
    monkeypatch.setattr(placement, "detect_gpus", lambda: gpus)
    runtime = runtimes()
    await runtime.apply(stack.spec(replicas=2, gpu=True, gpu_memory_mb=10_000))
    status = await runtime.wait_ready("tiny-v1-fp32", 30)

    def devices() -> list[str]:
        return [psutil.Process(pid).environ()["CUDA_VISIBLE_DEVICES"] for pid in runtime.pids("tiny-v1-fp32").values()]

    assert status.fallback is None and devices() == ["0", "1"]  # first-fit: 6 000 MB left on GPU 0 after one
    status = await runtime.scale("tiny-v1-fp32", 3)
    assert status.fallback == "no GPU has 10000 MB free (the most is 6000 MB on node GPU 0); serving on CPU"
    await until(lambda: len(runtime.pids("tiny-v1-fp32")) == 3)
    assert devices() == ["0", "1", ""]
    await runtime.scale("tiny-v1-fp32", 1)
    await runtime.scale("tiny-v1-fp32", 2)  # the GPU memory of the stopped replicas is free again
    await until(lambda: len(runtime.pids("tiny-v1-fp32")) == 2)
    assert devices() == ["0", "1"]

    monkeypatch.setattr(placement, "detect_gpus", list)  # a machine without GPUs
    cpu_only = runtimes()
    status = await cpu_only.apply(stack.spec(deployment_id="cpu-v1-fp32", gpu=True, gpu_memory_mb=1_000))
    assert status.state == RuntimeState.starting and status.fallback == NO_GPU_FALLBACK
    await until(lambda: len(cpu_only.pids("cpu-v1-fp32")) == 1)
    assert [psutil.Process(p).environ()["CUDA_VISIBLE_DEVICES"] for p in cpu_only.pids("cpu-v1-fp32").values()] == [""]


DEPLOYER = """
import asyncio, json, sys
from pathlib import Path
from gallery_deployer.runtime.base import ServerSpec
from gallery_deployer.runtime.local import LocalOptions, LocalRuntime

async def main():
    args = json.loads(sys.argv[1])
    runtime = LocalRuntime(LocalOptions(log_dir=Path(args["logs"]), health_interval_s=0.1), args["env"])
    spec = ServerSpec(**args["spec"])
    await runtime.apply(spec)
    status = await runtime.wait_ready(spec.deployment_id, 30)
    print(json.dumps({"state": status.state, "pids": list(runtime.pids(spec.deployment_id).values())}), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_a_killed_deployer_takes_its_model_servers_with_it(stack: Stack) -> None:
    spec = stack.spec(replicas=2)
    args = {"logs": str(stack.logs), "env": stack.env(), "spec": spec.__dict__}
    deployer = subprocess.Popen([sys.executable, "-c", DEPLOYER, json.dumps(args)], stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        assert deployer.stdout is not None
        line = ""
        while not line.startswith('{"state"'):  # the deployer's own log lines come first
            line = deployer.stdout.readline()
            assert line, "the deployer ended without reporting"
        report = json.loads(line)
        pids = report["pids"]
        assert report["state"] == "ready" and len(pids) == 2 and not any(gone(p) for p in pids)

        deployer.kill()
        deployer.wait(10)

        deadline = time.monotonic() + 15
        while not all(gone(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(gone(p) for p in pids), "model servers outlived the deployer"
    finally:
        deployer.kill()
        for pid in pids:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


@dataclass
class FakeReplica:
    key: ServerSpec
    ready: bool = False
    alive: bool = True
    stopping: bool = False


def test_a_rolling_update_surges_by_one_and_never_drops_below_the_old_count(stack: Stack) -> None:
    old, new = stack.spec(), stack.spec("b", BIAS_B)
    replicas: list[Any] = [FakeReplica(spec_key(old), ready=True) for _ in range(3)]
    ready_counts = []
    while (step := plan_step(replicas, new, 3, failed=False)) is not None:
        assert step.start <= 1 and len(step.stop) <= 1
        replicas += [FakeReplica(spec_key(new)) for _ in range(step.start)]
        for gone_replica in step.stop:
            replicas.remove(gone_replica)
        ready_counts.append(sum(r.ready for r in replicas))
        if plan_step(replicas, new, 3, failed=False) is None:  # waiting on the surge replica: it becomes ready
            for replica in replicas:
                replica.ready = True
    assert [r.key for r in replicas] == [spec_key(new)] * 3
    assert min(ready_counts) >= 3 and len(ready_counts) == 6  # start, stop, start, stop, start, stop
