"""The deployer serves the variant recommended for the hardware its replicas run on: the choice rule, node
labels as hardware classes, this host for the local runtime, and the controller rolling the chosen variant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from gallery_common.artifacts import open_store
from gallery_common.db import make_engine
from gallery_common.errors import NotFound, Unavailable
from gallery_common.events import ArtifactRef, ModelOptimized, Payload, VariantResult
from gallery_common.hardware import host_cpu
from gallery_deployer.deployer.controller import Controller
from gallery_deployer.deployer.migrations import upgrade
from gallery_deployer.deployer.records import DeploymentStore
from gallery_deployer.deployer.settings import DeployerSettings
from gallery_deployer.deployer.variant_choice import choose_variant, provider_order
from gallery_deployer.runtime.base import DeploymentStatus, RuntimeState, ServerSpec
from gallery_deployer.runtime.node_hardware import NodeHardware, local_node_hardware, nodes_hardware


def ref(name: str) -> ArtifactRef:
    return ArtifactRef(uri=f"s3://gallery/optimized/m/1/{name}.onnx", sha256=name.encode().hex().ljust(64, "0")[:64])


VARIANTS = ("fp32", "int8_dynamic", "int8_static", "distilled")
OPTIMIZED = ModelOptimized(
    model="m",
    version=1,
    recommended="int8_static",
    recommended_artifact=ref("int8_static"),
    variants=[VariantResult(name=name, artifact=ref(name)) for name in VARIANTS],
    recommendations={
        "cpu-x86-avx512-vnni/cpu": "int8_dynamic",
        "cpu-x86-avx2/cpu": "fp32",
        "cpu-x86-avx2/openvino": "distilled",
        "gpu-nvidia-h100-80gb-hbm3/cuda": "fp32",
    },
)
VNNI = NodeHardware("node-vnni", "cpu-x86-avx512-vnni")
AVX2 = NodeHardware("node-avx2", "cpu-x86-avx2")
H100 = NodeHardware("node-gpu", "cpu-x86-avx512-vnni", "gpu-nvidia-h100-80gb-hbm3")


def test_a_vnni_node_gets_the_variant_recommended_for_vnni_and_an_avx2_node_the_avx2_one() -> None:
    vnni = choose_variant(OPTIMIZED, [VNNI], ["cpu"])
    assert (vnni.variant, vnni.artifact, vnni.target) == (
        "int8_dynamic",
        ref("int8_dynamic"),
        "cpu-x86-avx512-vnni/cpu",
    )
    assert vnni.reason == "recommended for cpu-x86-avx512-vnni/cpu, the hardware of node(s) node-vnni"
    assert choose_variant(OPTIMIZED, [AVX2], ["cpu"]).variant == "fp32"


def test_the_providers_order_picks_openvino_before_the_cpu_where_the_policy_prefers_it() -> None:
    assert choose_variant(OPTIMIZED, [AVX2], ["openvino", "cpu"]).variant == "distilled"
    # a policy's order always ends with the CPU, so a node OpenVINO has nothing for still gets the CPU's
    assert provider_order(["openvino"]) == ("openvino", "cpu")
    assert choose_variant(OPTIMIZED, [VNNI], ["openvino"]).target == "cpu-x86-avx512-vnni/cpu"


def test_a_gpu_node_is_served_what_was_recommended_for_its_gpu() -> None:
    choice = choose_variant(OPTIMIZED, [H100], [])  # the model server's default: CUDA, else the CPU
    assert (choice.variant, choice.target) == ("fp32", "gpu-nvidia-h100-80gb-hbm3/cuda")


def test_a_class_without_a_recommendation_gets_the_generic_one_and_says_so() -> None:
    arm = NodeHardware("node-arm", "cpu-arm64-dotprod")
    choice = choose_variant(OPTIMIZED, [arm], ["cpu"])
    assert (choice.variant, choice.artifact, choice.target) == ("int8_static", ref("int8_static"), None)
    assert choice.reason == (
        "no recommendation for node node-arm (cpu-arm64-dotprod/cpu); recommended for: cpu-x86-avx2/cpu, "
        "cpu-x86-avx2/openvino, cpu-x86-avx512-vnni/cpu, gpu-nvidia-h100-80gb-hbm3/cuda; "
        "serving the generic recommendation int8_static"
    )


def test_nodes_that_want_different_variants_get_the_generic_one_naming_them() -> None:
    choice = choose_variant(OPTIMIZED, [VNNI, AVX2], ["cpu"])
    assert choice.variant == "int8_static"
    assert "node-avx2: cpu-x86-avx2/cpu -> fp32, node-vnni: cpu-x86-avx512-vnni/cpu -> int8_dynamic" in choice.reason
    # nodes of one class agree
    assert choose_variant(OPTIMIZED, [VNNI, NodeHardware("node-vnni-2", VNNI.cpu_class)], ["cpu"]).variant == (
        "int8_dynamic"
    )


def test_an_event_from_an_optimizer_without_recommendations_per_target_serves_the_generic_one() -> None:
    old = OPTIMIZED.model_copy(update={"recommendations": {}})
    choice = choose_variant(old, [VNNI], ["cpu"])
    assert choice.variant == "int8_static" and "recommended for: none" in choice.reason
    assert choose_variant(OPTIMIZED, [], ["cpu"]).reason.startswith("the runtime named no node")


def test_a_recommended_variant_without_an_artifact_is_not_served() -> None:
    stripped = OPTIMIZED.model_copy(update={"variants": [v for v in OPTIMIZED.variants if v.name != "int8_dynamic"]})
    assert choose_variant(stripped, [VNNI], ["cpu"]).target is None


def node(name: str, labels: dict[str, str], unschedulable: bool = False) -> dict[str, object]:
    return {"metadata": {"name": name, "labels": labels}, "spec": {"unschedulable": unschedulable}}


NFD = "feature.node.kubernetes.io/cpu-cpuid."


def test_kubernetes_nodes_are_classed_by_their_labels_and_cordoned_ones_left_out() -> None:
    nodes = [
        node("a", {"kubernetes.io/arch": "amd64", NFD + "AVX2": "true", NFD + "AVX512VNNI": "true"}),
        node("b", {"kubernetes.io/arch": "amd64", NFD + "AVX2": "true"}, unschedulable=True),
        node(
            "g",
            {
                "kubernetes.io/arch": "amd64",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
            },
        ),
    ]
    cpu = nodes_hardware(nodes, gpu=False, gpu_node_selector={})
    assert cpu == [
        NodeHardware("a", "cpu-x86-avx512-vnni"),
        NodeHardware("g", "cpu-x86", "gpu-nvidia-h100-80gb-hbm3"),
    ]
    gpu = nodes_hardware(nodes, gpu=True, gpu_node_selector={"nvidia.com/gpu.present": "true"})
    assert gpu == [NodeHardware("g", "cpu-x86", "gpu-nvidia-h100-80gb-hbm3")]


def test_the_local_runtime_runs_replicas_on_this_host_with_its_classes() -> None:
    def no_gpu() -> str:
        raise FileNotFoundError("nvidia-smi")

    [here] = local_node_hardware(no_gpu)
    assert (here.cpu_class, here.gpu_class) == (host_cpu().hardware_class, None)
    [gpu_host] = local_node_hardware(lambda: "NVIDIA L4\n")
    assert gpu_host.gpu_class == "gpu-nvidia-l4"


class NodeAwareRuntime:
    """Replicas ready at once, on the nodes the test says; `fail` makes the node listing fail."""

    name = "fake"

    def __init__(self) -> None:
        self.specs: dict[str, ServerSpec] = {}
        self.nodes: list[NodeHardware] = []
        self.fail: str | None = None

    async def node_hardware(self, spec: ServerSpec) -> list[NodeHardware]:
        if self.fail:
            raise Unavailable(self.fail)
        return self.nodes

    async def apply(self, spec: ServerSpec) -> DeploymentStatus:
        self.specs[spec.deployment_id] = spec
        return await self.status(spec.deployment_id)

    async def wait_ready(self, deployment_id: str, timeout_s: float) -> DeploymentStatus:
        return await self.status(deployment_id)

    async def status(self, deployment_id: str) -> DeploymentStatus:
        if deployment_id not in self.specs:
            raise NotFound(deployment_id)
        spec = self.specs[deployment_id]
        urls = tuple(f"http://{deployment_id}-{i}:8500" for i in range(spec.replicas))
        return DeploymentStatus(deployment_id, RuntimeState.ready, spec.replicas, spec.replicas, urls)

    async def scale(self, deployment_id: str, replicas: int) -> DeploymentStatus:
        return await self.status(deployment_id)

    async def delete(self, deployment_id: str) -> None:
        self.specs.pop(deployment_id, None)

    async def close(self) -> None:
        pass


class Quiet:
    async def put(self, *_: object) -> None:
        pass

    async def delete(self, *_: object) -> None:
        pass

    async def close(self) -> None:
        pass

    def get_version(self, *_: object) -> SimpleNamespace:
        return SimpleNamespace(task="classification")

    def set_alias(self, *_: object, **__: object) -> dict[str, object]:
        return {}


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[Controller]:
    settings = DeployerSettings(home=tmp_path, drain_s=0, canary_window_s=3600)
    engine = make_engine(f"sqlite:///{tmp_path / 'deployer.db'}")
    upgrade(engine)

    async def publish(payload: Payload, event_id: str) -> None:
        pass

    built = Controller(
        settings,
        DeploymentStore(engine),
        NodeAwareRuntime(),  # type: ignore[arg-type]
        Quiet(),  # type: ignore[arg-type]
        Quiet(),  # type: ignore[arg-type]
        open_store((tmp_path / "artifacts").as_uri(), settings),
        publish,
    )
    yield built
    await built.close()


async def test_the_controller_rolls_the_variant_recommended_for_the_runtimes_nodes(controller: Controller) -> None:
    runtime: NodeAwareRuntime = controller.runtime  # type: ignore[assignment]
    runtime.nodes = [VNNI]
    await controller.deploy("m", 1, ref("fp32"))
    choice = await controller.variant_for(OPTIMIZED)
    record = await controller.roll_variant("m", 1, choice.variant, choice.artifact, choice.reason)
    assert record is not None
    assert (record.variant, record.artifact_sha256) == ("int8_dynamic", ref("int8_dynamic").sha256)
    assert record.reason == "recommended for cpu-x86-avx512-vnni/cpu, the hardware of node(s) node-vnni"
    assert runtime.specs[record.id].variant == "int8_dynamic"


async def test_nodes_the_runtime_cannot_list_mean_the_generic_recommendation(controller: Controller) -> None:
    runtime: NodeAwareRuntime = controller.runtime  # type: ignore[assignment]
    await controller.deploy("m", 1, ref("fp32"))
    runtime.fail = "Kubernetes API unreachable while listing nodes"
    choice = await controller.variant_for(OPTIMIZED)
    assert (choice.variant, choice.target) == ("int8_static", None)
    assert choice.reason == (
        "the nodes the replicas may run on are unknown (Kubernetes API unreachable while listing nodes); "
        "serving the generic recommendation int8_static"
    )
