"""The Kubernetes runtime names the nodes a deployment's pods may land on, classed by their labels, through
the official client against the API contract (the in-process fake API server), and the deployer serves the
variant recommended for them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import pytest
from k8s_api_fake import FakeKubernetesApi
from kubernetes import client

from gallery_common.errors import GalleryError
from gallery_common.events import ArtifactRef, ModelOptimized, VariantResult
from gallery_deployer.deployer.variant_choice import choose_variant
from gallery_deployer.runtime.base import ServerSpec
from gallery_deployer.runtime.kubernetes import KubernetesRuntime
from gallery_deployer.runtime.manifests import KubernetesOptions
from gallery_deployer.runtime.node_hardware import NodeHardware

NFD = "feature.node.kubernetes.io/cpu-cpuid."
CPU_SPEC = ServerSpec(
    deployment_id="digits-v3-fp32",
    model="digits",
    version=3,
    variant="fp32",
    artifact_uri="s3://gallery/runs/r1/model.onnx",
    artifact_sha256="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    replicas=2,
)
GPU_SPEC = replace(CPU_SPEC, deployment_id="digits-v3-int8", gpu=True, gpu_memory_mb=3_000)


@pytest.fixture
def fake() -> Iterator[FakeKubernetesApi]:
    with FakeKubernetesApi() as api:
        yield api


@pytest.fixture
async def runtime(fake: FakeKubernetesApi) -> AsyncIterator[KubernetesRuntime]:
    api_client = client.ApiClient(client.Configuration(host=fake.url, no_proxy="127.0.0.1"))
    runtime = KubernetesRuntime(KubernetesOptions(), api_client)
    yield runtime
    await runtime.close()
    api_client.close()


def vnni_node(fake: FakeKubernetesApi, name: str, **extra: str) -> None:
    labels = {"kubernetes.io/arch": "amd64", NFD + "AVX2": "true", NFD + "AVX512BW": "true", NFD + "AVX512VNNI": "true"}
    fake.add_node(name, {**labels, **extra})


async def test_a_cpu_deployment_may_land_on_every_schedulable_node(
    fake: FakeKubernetesApi, runtime: KubernetesRuntime
) -> None:
    vnni_node(fake, "cpu-1")
    fake.add_node("old-1", {"kubernetes.io/arch": "amd64", NFD + "AVX2": "true"}, unschedulable=True)
    fake.add_node("arm-1", {"kubernetes.io/arch": "arm64", NFD + "ASIMDDP": "true"})

    nodes = await runtime.node_hardware(CPU_SPEC)

    assert sorted(nodes, key=lambda n: n.node) == [
        NodeHardware("arm-1", "cpu-arm64-dotprod"),
        NodeHardware("cpu-1", "cpu-x86-avx512-vnni"),
    ]
    [listing] = [r for r in fake.requests if r.method == "GET"]
    assert listing.path == "/api/v1/nodes"


async def test_a_gpu_deployment_asks_only_for_nodes_matching_the_gpu_node_selector(
    fake: FakeKubernetesApi, runtime: KubernetesRuntime
) -> None:
    vnni_node(fake, "cpu-1")
    vnni_node(fake, "gpu-1", **{"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"})

    nodes = await runtime.node_hardware(GPU_SPEC)

    assert nodes == [NodeHardware("gpu-1", "cpu-x86-avx512-vnni", "gpu-nvidia-h100-80gb-hbm3")]
    [listing] = [r for r in fake.requests if r.method == "GET"]
    assert listing.query["labelSelector"] == "nvidia.com/gpu.present=true"


async def test_a_refused_node_listing_is_an_error_naming_what_was_asked(
    fake: FakeKubernetesApi, runtime: KubernetesRuntime
) -> None:
    fake.fail_next("GET", 403, "Forbidden", 'nodes is forbidden: cannot list resource "nodes" at the cluster scope')
    with pytest.raises(GalleryError, match="listing nodes"):
        await runtime.node_hardware(CPU_SPEC)


async def test_the_variant_follows_the_node_pool(fake: FakeKubernetesApi, runtime: KubernetesRuntime) -> None:
    def ref(name: str) -> ArtifactRef:
        return ArtifactRef(uri=f"s3://gallery/{name}.onnx", sha256=name.encode().hex().ljust(64, "0")[:64])

    optimized = ModelOptimized(
        model="digits",
        version=3,
        recommended="fp32",
        recommended_artifact=ref("fp32"),
        variants=[VariantResult(name=n, artifact=ref(n)) for n in ("fp32", "int8_dynamic")],
        recommendations={"cpu-x86-avx512-vnni/cpu": "int8_dynamic", "cpu-x86-avx2/cpu": "fp32"},
    )
    vnni_node(fake, "cpu-1")
    vnni_node(fake, "cpu-2")
    assert choose_variant(optimized, await runtime.node_hardware(CPU_SPEC), ["cpu"]).variant == "int8_dynamic"
    # an AVX2 node joins the pool: a replica may land there, where INT8 with full 8-bit weights is not safe
    fake.add_node("cpu-3", {"kubernetes.io/arch": "amd64", NFD + "AVX2": "true"})
    mixed = choose_variant(optimized, await runtime.node_hardware(CPU_SPEC), ["cpu"])
    assert mixed.variant == "fp32" and mixed.target is None
    assert "cpu-3: cpu-x86-avx2/cpu -> fp32" in mixed.reason
