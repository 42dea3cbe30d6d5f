"""The deployer's Role grants exactly what its Kubernetes runtime does: the runtime is driven through
every operation against the in-process Kubernetes API of the deployer's own tests, and each request
it makes becomes the (API group, resource, verb) RBAC would check."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from deploy_k8s_objects import OVERLAYS, ROOT, container, find, manifests, pod_spec
from kubernetes import client

from gallery_deployer.runtime.base import ServerSpec
from gallery_deployer.runtime.kubernetes import KubernetesRuntime
from gallery_deployer.runtime.manifests import KubernetesOptions

# The fake lives beside the runtime's own integration tests; both modules import each other by name.
_FAKE_DIR = str(ROOT / "tests" / "integration" / "deployer")
if _FAKE_DIR not in sys.path:
    sys.path.insert(0, _FAKE_DIR)
k8s_api_fake: Any = importlib.import_module("k8s_api_fake")

GROUPS = {"deployments": "apps", "horizontalpodautoscalers": "autoscaling", "poddisruptionbudgets": "policy"}
CPU_SPEC = ServerSpec(
    deployment_id="digits-v3-fp32",
    model="digits",
    version=3,
    variant="fp32",
    artifact_uri="s3://modelgallery/runs/r1/model.onnx",
    artifact_sha256="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    replicas=2,
)
GPU_SPEC = replace(CPU_SPEC, deployment_id="digits-v3-int8", variant="int8", gpu=True, gpu_memory_mb=3_000)
Permission = tuple[str, str, str]


@pytest.fixture
def fake() -> Iterator[Any]:
    with k8s_api_fake.FakeKubernetesApi() as api:
        yield api


def permissions(requests: list[Any]) -> set[Permission]:
    """What RBAC checks for each request: a server-side apply may create, so it needs create and patch."""
    needed = set()
    for request in requests:
        parts = request.path.strip("/").split("/")
        plural = parts[parts.index("namespaces") + 2]
        named = len(parts) > parts.index("namespaces") + 3
        resource = (GROUPS.get(plural, ""), plural)
        if request.method == "PATCH":
            needed.add((*resource, "patch"))
            if request.content_type == "application/apply-patch+yaml":
                needed.add((*resource, "create"))
        elif request.method == "WATCH":
            needed.add((*resource, "watch"))
        elif request.method == "GET":
            needed.add((*resource, "get" if named else "list"))
        else:
            needed.add((*resource, request.method.lower()))
    return needed


async def exercise(fake: Any) -> None:
    """Every operation of the runtime, the GPU -> CPU fallback and its retirement included."""
    api_client = client.ApiClient(client.Configuration(host=fake.url, no_proxy="127.0.0.1"))
    options = KubernetesOptions(status_poll_s=30, gpu_fallback_timeout_s=1)
    runtime = KubernetesRuntime(options, api_client)
    try:
        await runtime.apply(CPU_SPEC)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_later, 0.2, lambda: fake.complete_rollout(CPU_SPEC.deployment_id))
            await runtime.wait_ready(CPU_SPEC.deployment_id, timeout_s=10)
        await runtime.scale(CPU_SPEC.deployment_id, 3)
        await runtime.status(CPU_SPEC.deployment_id)

        gpu = GPU_SPEC.deployment_id
        await runtime.apply(GPU_SPEC)
        fake.unschedulable(
            gpu, "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.", datetime.now(UTC) - timedelta(minutes=1)
        )
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_once_fallen_back, fake, gpu)
            assert (await runtime.wait_ready(gpu, timeout_s=10)).fallback is not None
        await runtime.apply(GPU_SPEC)  # tries the GPU again beside the fallback
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_later, 0.2, lambda: fake.complete_rollout(gpu))
            assert (await runtime.wait_ready(gpu, timeout_s=10)).fallback is None  # the fallback retired

        await runtime.delete(CPU_SPEC.deployment_id)
        await runtime.delete(gpu)
    finally:
        await runtime.close()
        api_client.close()


async def _later(seconds: float, action: Any) -> None:
    await anyio.sleep(seconds)
    action()


async def _once_fallen_back(fake: Any, gpu: str) -> None:
    with anyio.fail_after(10):
        while fake.get("deployments", f"{gpu}-cpu") is None:
            await anyio.sleep(0.02)
    fake.complete_rollout(gpu)
    fake.complete_rollout(f"{gpu}-cpu")


def granted(role: dict[str, Any]) -> set[Permission]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


async def test_the_role_grants_exactly_what_the_runtime_asks_for(fake: Any) -> None:
    await exercise(fake)
    needed = permissions(fake.requests)
    assert {resource for _, resource, _ in needed} == {
        "deployments",
        "services",
        "horizontalpodautoscalers",
        "poddisruptionbudgets",
        "pods",
    }
    for overlay in OVERLAYS:
        assert granted(find(manifests(overlay), "Role", "deployer")) == needed


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_deployer_runs_under_its_account_bound_to_the_role_in_its_namespace(overlay: str) -> None:
    objs = manifests(overlay)
    deployer = find(objs, "Deployment", "deployer")
    assert pod_spec(deployer)["serviceAccountName"] == "deployer"
    assert pod_spec(deployer)["automountServiceAccountToken"] is True
    binding = find(objs, "RoleBinding", "deployer")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "deployer"}
    namespace = deployer["metadata"]["namespace"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "deployer", "namespace": namespace}]
    assert find(objs, "Role", "deployer")["metadata"]["namespace"] == namespace
    namespaced = next(e for e in container(deployer)["env"] if e["name"] == "POD_NAMESPACE")
    assert namespaced["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
