"""The Kubernetes runtime through the official client against the API contract, served by an in-process fake."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import Any

import anyio
import pytest
from k8s_api_fake import FakeKubernetesApi
from kubernetes import client

from gallery_common.errors import InvalidRequest, NotFound, Unavailable
from gallery_common.netutil import free_port
from gallery_deployer.modelserver.__main__ import parse_args
from gallery_deployer.runtime.base import RuntimeState, ServerSpec
from gallery_deployer.runtime.kubernetes import KubernetesRuntime
from gallery_deployer.runtime.manifests import KubernetesOptions, deployment_manifest
from gallery_deployer.runtime.placement import GpuDevice, PlacementRequest, plan_placement

NS = "modelgallery"
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
NEW_SHA = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"
NO_GPU = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
# Long enough that a test passing proves the watch woke wait_ready, not the periodic re-read.
OPTIONS = KubernetesOptions(status_poll_s=30, gpu_fallback_timeout_s=2)

CPU_SPEC = ServerSpec(
    deployment_id="digits-v3-fp32",
    model="digits",
    version=3,
    variant="fp32",
    artifact_uri="s3://gallery/runs/r1/model.onnx",
    artifact_sha256=SHA,
    replicas=2,
)
GPU_SPEC = replace(CPU_SPEC, deployment_id="digits-v3-int8", variant="int8", gpu=True, gpu_memory_mb=3_000)


@pytest.fixture
def fake() -> Iterator[FakeKubernetesApi]:
    with FakeKubernetesApi() as api:
        yield api


def api_client_for(url: str) -> client.ApiClient:
    return client.ApiClient(client.Configuration(host=url, no_proxy="127.0.0.1"))


@pytest.fixture
async def runtime(fake: FakeKubernetesApi) -> AsyncIterator[KubernetesRuntime]:
    api_client = api_client_for(fake.url)
    runtime = KubernetesRuntime(OPTIONS, api_client)
    yield runtime
    await runtime.close()
    api_client.close()


async def after(seconds: float, action: Callable[[], None]) -> None:
    await anyio.sleep(seconds)
    action()


async def once(condition: Callable[[], bool], *actions: Callable[[], None]) -> None:
    with anyio.fail_after(15):
        while not condition():
            await anyio.sleep(0.02)
    for action in actions:
        action()


def fell_back(fake: FakeKubernetesApi) -> bool:
    """The runtime created the CPU Deployment and scaled the GPU one to 0."""
    gpu = fake.get("deployments", "digits-v3-int8")
    return (
        fake.get("deployments", "digits-v3-int8-cpu") is not None and gpu is not None and gpu["spec"]["replicas"] == 0
    )


def container_of(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]


async def test_apply_creates_the_four_objects_server_side_with_the_field_manager_and_force(
    fake: FakeKubernetesApi, runtime: KubernetesRuntime
) -> None:
    status = await runtime.apply(CPU_SPEC)

    assert status.state is RuntimeState.starting
    assert status.desired == 2
    assert status.endpoints == ("http://digits-v3-fp32.modelgallery.svc.cluster.local:8500",)
    # the gateway's gRPC front reaches the same Service on its grpc port
    assert status.grpc_endpoints == {status.endpoints[0]: "digits-v3-fp32.modelgallery.svc.cluster.local:8501"}
    for plural in ("deployments", "services", "horizontalpodautoscalers", "poddisruptionbudgets"):
        assert fake.names(plural) == ["digits-v3-fp32"], plural
    applies = [r for r in fake.requests if r.method == "PATCH"]
    assert [r.path.rsplit("/", 2)[1] for r in applies] == [
        "deployments",
        "services",
        "horizontalpodautoscalers",
        "poddisruptionbudgets",
    ]
    for request in applies:
        assert request.content_type == "application/apply-patch+yaml"
        assert request.query == {"fieldManager": "modelgallery-deployer", "force": "true"}
    stored = fake.get("deployments", "digits-v3-fp32")
    assert stored is not None
    assert stored["spec"] == deployment_manifest(CPU_SPEC, OPTIONS)["spec"]
    assert [(f["manager"], f["operation"]) for f in stored["metadata"]["managedFields"]] == [
        ("modelgallery-deployer", "Apply")
    ]


async def test_apply_takes_back_fields_another_manager_changed(
    fake: FakeKubernetesApi, runtime: KubernetesRuntime
) -> None:
    await runtime.apply(CPU_SPEC)
    with api_client_for(fake.url) as other:  # someone runs `kubectl scale --replicas 7`
        client.AppsV1Api(other).patch_namespaced_deployment(
            "digits-v3-fp32",
            NS,
            {"spec": {"replicas": 7}},
            field_manager="kubectl",
            _content_type="application/merge-patch+json",
        )

    status = await runtime.apply(replace(CPU_SPEC, artifact_sha256=NEW_SHA))

    stored = fake.get("deployments", "digits-v3-fp32")
    assert stored is not None and stored["spec"]["replicas"] == 2
    assert parse_args(container_of(stored)["args"])["artifact_sha256"] == NEW_SHA
    assert stored["metadata"]["generation"] == 3
    assert status.desired == 2


async def test_wait_ready_returns_ready_when_the_rollout_completes(
    fake: FakeKubernetesApi, runtime: KubernetesRuntime
) -> None:
    await runtime.apply(CPU_SPEC)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(after, 0.3, lambda: fake.complete_rollout("digits-v3-fp32"))
        status = await runtime.wait_ready("digits-v3-fp32", timeout_s=20)

    # The periodic re-read (30 s) comes after the timeout (20 s): only the watch can have woken it.
    assert status.state is RuntimeState.ready, status.detail
    assert (status.desired, status.ready) == (2, 2)
    assert [(r.url, r.ready) for r in status.replicas] == [
        ("http://10.0.0.10:8500", True),
        ("http://10.0.0.11:8500", True),
    ]
    watches = [r for r in fake.requests if r.method == "WATCH"]
    assert watches and watches[0].path == f"/apis/apps/v1/namespaces/{NS}/deployments"
    assert watches[0].query["labelSelector"] == "modelgallery.io/deployment=digits-v3-fp32"
    assert int(watches[0].query["resourceVersion"]) > 0


async def test_wait_ready_fails_with_the_reason_when_the_progress_deadline_passes(
    fake: FakeKubernetesApi, runtime: KubernetesRuntime
) -> None:
    await runtime.apply(CPU_SPEC)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(after, 0.3, lambda: fake.progress_deadline_exceeded("digits-v3-fp32"))
        status = await runtime.wait_ready("digits-v3-fp32", timeout_s=20)

    assert status.state is RuntimeState.failed
    assert status.detail == (
        'rollout exceeded its progress deadline: ReplicaSet "digits-v3-fp32-7d9f" has timed out progressing.'
    )


async def test_wait_ready_gives_up_at_its_timeout_with_where_the_rollout_stands(runtime: KubernetesRuntime) -> None:
    await runtime.apply(CPU_SPEC)
    status = await runtime.wait_ready("digits-v3-fp32", timeout_s=1.0)
    assert status.state is RuntimeState.starting
    assert status.detail == "waiting for the controller to observe generation 1"


async def test_status_reports_a_crash_loop(fake: FakeKubernetesApi, runtime: KubernetesRuntime) -> None:
    await runtime.apply(CPU_SPEC)
    fake.crash_loop("digits-v3-fp32", restarts=5)

    status = await runtime.status("digits-v3-fp32")

    assert status.state is RuntimeState.failed
    assert status.ready == 0
    assert status.detail.startswith("digits-v3-fp32-7d9f-0: CrashLoopBackOff: back-off 1m20s")
    assert status.detail.endswith("(last exit code 1: Error)")
    assert [r.restarts for r in status.replicas] == [5, 5]
    assert all(r.detail.startswith("CrashLoopBackOff") and not r.ready for r in status.replicas)
    assert (await runtime.wait_ready("digits-v3-fp32", timeout_s=20)).state is RuntimeState.failed


async def test_scale_to_zero_and_back(fake: FakeKubernetesApi, runtime: KubernetesRuntime) -> None:
    await runtime.apply(CPU_SPEC)
    fake.complete_rollout("digits-v3-fp32")

    status = await runtime.scale("digits-v3-fp32", 0)
    assert status.desired == 0 and status.state is RuntimeState.starting  # the two pods are still going
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(after, 0.2, lambda: fake.complete_rollout("digits-v3-fp32"))
        status = await runtime.wait_ready("digits-v3-fp32", timeout_s=20)
    assert status.state is RuntimeState.scaled_to_zero
    assert status.replicas == () and fake.names("pods") == []

    status = await runtime.scale("digits-v3-fp32", 3)
    assert status.desired == 3
    hpa = fake.get("horizontalpodautoscalers", "digits-v3-fp32")
    assert hpa is not None and (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 4)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(after, 0.2, lambda: fake.complete_rollout("digits-v3-fp32"))
        status = await runtime.wait_ready("digits-v3-fp32", timeout_s=20)
    assert (status.state, status.ready) == (RuntimeState.ready, 3)

    with pytest.raises(InvalidRequest, match="must not be negative"):
        await runtime.scale("digits-v3-fp32", -1)
    with pytest.raises(NotFound, match="no deployment 'nope'"):
        await runtime.scale("nope", 1)


async def test_delete_removes_everything_and_is_idempotent(fake: FakeKubernetesApi, runtime: KubernetesRuntime) -> None:
    await runtime.apply(CPU_SPEC)
    fake.complete_rollout("digits-v3-fp32")
    await runtime.apply(replace(CPU_SPEC, deployment_id="digits-v2-fp32", version=2))

    await runtime.delete("digits-v3-fp32")

    for plural in ("deployments", "services", "horizontalpodautoscalers", "poddisruptionbudgets"):
        assert fake.names(plural) == ["digits-v2-fp32"], plural
    assert fake.names("pods") == []
    await runtime.delete("digits-v3-fp32")
    with pytest.raises(NotFound, match="no deployment 'digits-v3-fp32' in namespace 'modelgallery'"):
        await runtime.status("digits-v3-fp32")


async def test_unschedulable_gpu_pods_fall_back_to_a_cpu_deployment(
    fake: FakeKubernetesApi, runtime: KubernetesRuntime
) -> None:
    await runtime.apply(GPU_SPEC)
    marked = time.monotonic()
    fake.unschedulable("digits-v3-int8", NO_GPU)
    seen: dict[str, float] = {}

    def cpu_rollout_done() -> None:
        seen["cpu"] = time.monotonic() - marked
        fake.complete_rollout("digits-v3-int8")  # scaled to 0: its pending pods go away
        fake.complete_rollout("digits-v3-int8-cpu")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(once, lambda: fell_back(fake), cpu_rollout_done)
        status = await runtime.wait_ready("digits-v3-int8", timeout_s=20)

    # Timestamps have whole seconds, so the fallback comes between 1 and 2 s after the pods went pending.
    assert seen["cpu"] >= 1.0
    assert status.state is RuntimeState.ready
    assert (status.desired, status.ready) == (2, 2)
    assert status.fallback is not None
    assert re.fullmatch(rf"GPU pods unschedulable for [12] s: {re.escape(NO_GPU)}; serving on CPU", status.fallback)
    assert [r.name for r in status.replicas] == ["digits-v3-int8-cpu-7d9f-0", "digits-v3-int8-cpu-7d9f-1"]
    assert status.endpoints == ("http://digits-v3-int8.modelgallery.svc.cluster.local:8500",)

    cpu = fake.get("deployments", "digits-v3-int8-cpu")
    gpu = fake.get("deployments", "digits-v3-int8")
    hpa = fake.get("horizontalpodautoscalers", "digits-v3-int8")
    assert cpu is not None and gpu is not None and hpa is not None
    assert cpu["spec"]["replicas"] == 2 and gpu["spec"]["replicas"] == 0
    assert "nvidia.com/gpu" not in container_of(cpu)["resources"]["limits"]
    assert container_of(cpu)["image"] == OPTIONS.image
    assert parse_args(container_of(cpu)["args"])["artifact_sha256"] == SHA
    assert cpu["metadata"]["annotations"]["modelgallery.io/fallback"] == status.fallback
    assert hpa["spec"]["scaleTargetRef"]["name"] == "digits-v3-int8-cpu"
    assert (await runtime.status("digits-v3-int8")).fallback == status.fallback


async def test_the_next_apply_tries_the_gpu_again_and_retires_the_fallback(
    fake: FakeKubernetesApi, runtime: KubernetesRuntime
) -> None:
    await runtime.apply(GPU_SPEC)
    fake.unschedulable("digits-v3-int8", NO_GPU)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(
            once,
            lambda: fell_back(fake),
            lambda: fake.complete_rollout("digits-v3-int8"),
            lambda: fake.complete_rollout("digits-v3-int8-cpu"),
        )
        assert (await runtime.wait_ready("digits-v3-int8", timeout_s=20)).fallback is not None

    status = await runtime.apply(replace(GPU_SPEC, artifact_sha256=NEW_SHA))
    # While the GPU is tried again the CPU fallback keeps serving, already on the new artifact.
    cpu = fake.get("deployments", "digits-v3-int8-cpu")
    assert cpu is not None and parse_args(container_of(cpu)["args"])["artifact_sha256"] == NEW_SHA
    gpu = fake.get("deployments", "digits-v3-int8")
    assert gpu is not None and gpu["spec"]["replicas"] == 2
    assert status.fallback is not None

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(after, 0.3, lambda: fake.complete_rollout("digits-v3-int8-cpu"))
        tasks.start_soon(after, 0.6, lambda: fake.complete_rollout("digits-v3-int8"))
        status = await runtime.wait_ready("digits-v3-int8", timeout_s=20)

    assert status.state is RuntimeState.ready and status.fallback is None
    assert fake.names("deployments") == ["digits-v3-int8"]
    hpa = fake.get("horizontalpodautoscalers", "digits-v3-int8")
    assert hpa is not None and hpa["spec"]["scaleTargetRef"]["name"] == "digits-v3-int8"


async def test_a_gpu_plan_becomes_scheduling_hints_on_the_gpu_deployment(
    fake: FakeKubernetesApi, runtime: KubernetesRuntime
) -> None:
    inventory = [GpuDevice("gpu-node-1", 0, 24_000, used_mb=22_000), GpuDevice("gpu-node-2", 0, 24_000)]
    runtime.set_placement(plan_placement([PlacementRequest("digits-v3-int8", 2, 3_000)], inventory))

    await runtime.apply(GPU_SPEC)

    stored = fake.get("deployments", "digits-v3-int8")
    assert stored is not None
    assert stored["metadata"]["annotations"]["modelgallery.io/gpu-plan"] == (
        '[{"node":"gpu-node-2","gpu":0},{"node":"gpu-node-2","gpu":0}]'
    )
    [term] = stored["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["preference"]["matchExpressions"][0]["values"] == ["gpu-node-2"]


async def test_api_errors_become_clear_gallery_errors(fake: FakeKubernetesApi, runtime: KubernetesRuntime) -> None:
    refusal = (
        'Deployment.apps "digits-v3-fp32" is invalid: spec.template.spec.containers[0].resources.requests: '
        'Invalid value: "2": must be less than or equal to cpu limit of 1'
    )
    fake.fail_next("PATCH", 422, "Invalid", refusal)
    with pytest.raises(InvalidRequest) as invalid:
        await runtime.apply(CPU_SPEC)
    assert invalid.value.message == f"Kubernetes refused applying Deployment modelgallery/digits-v3-fp32: {refusal}"

    fake.fail_next("GET", 503, "ServiceUnavailable", "etcdserver: leader changed")
    with pytest.raises(Unavailable, match="etcdserver: leader changed"):
        await runtime.status("digits-v3-fp32")


async def test_an_unreachable_api_is_unavailable() -> None:
    with api_client_for(f"http://127.0.0.1:{free_port()}") as api_client:
        runtime = KubernetesRuntime(OPTIONS.model_copy(update={"request_timeout_s": 2.0}), api_client)
        with pytest.raises(Unavailable, match="Kubernetes API unreachable while listing Deployments"):
            await runtime.status("digits-v3-fp32")
