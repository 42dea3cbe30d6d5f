"""Which optimized variant a deployment serves: the one recommended for the hardware its replicas run on.

`model.optimized` carries a recommendation per target, `<hardware class>/<provider>` (INT8 pays on a VNNI
CPU and barely on an AVX2 one; OpenVINO's provider prefers other variants than the CPU provider), and a
generic one. The runtime says which nodes a replica may land on and what hardware each has (the local
runtime: this host; Kubernetes: the node labels, see `runtime/node_hardware.py`). For each node the
deployer takes the first of the deployment's providers, in its order of preference, that has a
recommendation on that node's class: the CPU class for `cpu` and `openvino`, the GPU class for `cuda` and
`tensorrt`. When the nodes agree, that variant serves; when a node has no recommendation, or the nodes
would serve different variants, the generic recommendation serves and the reason says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gallery_common.events import ArtifactRef, ModelOptimized
from gallery_common.targets import GPU_PROVIDERS

from ..runtime.node_hardware import NodeHardware

DEFAULT_PROVIDERS = ("cuda", "cpu")  # the model server's own default: CUDA where it has it, else the CPU


@dataclass(frozen=True)
class VariantChoice:
    """The variant to serve and its artifact; `target` is the recommendation it follows (None: the generic
    one), `reason` says why in words a person reads in the deployment's record and the log."""

    variant: str
    artifact: ArtifactRef
    target: str | None
    reason: str


def provider_order(preferred: Sequence[str]) -> tuple[str, ...]:
    """The providers a replica would use, best first: the policy's order (the CPU last), else the default."""
    order = tuple(dict.fromkeys(preferred)) or DEFAULT_PROVIDERS
    return order if "cpu" in order else (*order, "cpu")


def target_keys(node: NodeHardware, providers: Sequence[str]) -> list[str]:
    """The targets a node offers for `providers`, in their order: `<class>/<provider>` for each provider
    whose class (GPU for cuda and tensorrt, CPU for the others) the node has."""
    keys = []
    for provider in providers:
        hardware_class = node.gpu_class if provider in GPU_PROVIDERS else node.cpu_class
        if hardware_class is not None:
            keys.append(f"{hardware_class}/{provider}")
    return keys


def choose_variant(
    optimized: ModelOptimized,
    nodes: Sequence[NodeHardware],
    providers: Sequence[str],
    *,
    no_nodes: str = "the runtime named no node the replicas may run on",
) -> VariantChoice:
    """The variant for replicas that may run on any of `nodes` with `providers` (see the module docstring);
    `no_nodes` is the reason given for the generic recommendation when `nodes` is empty."""
    artifacts = {v.name: v.artifact for v in optimized.variants if v.artifact is not None}
    recommended = {key: name for key, name in optimized.recommendations.items() if name in artifacts}

    def generic(why: str) -> VariantChoice:
        reason = f"{why}; serving the generic recommendation {optimized.recommended}"
        return VariantChoice(optimized.recommended, optimized.recommended_artifact, None, reason)

    if not nodes:
        return generic(no_nodes)
    picks: dict[str, tuple[str, str]] = {}  # node -> (target, variant)
    for node in nodes:
        keys = target_keys(node, provider_order(providers))
        key = next((k for k in keys if k in recommended), None)
        if key is None:
            offered = ", ".join(keys) or "no known hardware class"
            measured = ", ".join(sorted(optimized.recommendations)) or "none"
            return generic(f"no recommendation for node {node.node} ({offered}); recommended for: {measured}")
        picks[node.node] = (key, recommended[key])
    variants = {variant for _, variant in picks.values()}
    if len(variants) > 1:
        described = ", ".join(f"{node}: {key} -> {variant}" for node, (key, variant) in sorted(picks.items()))
        return generic(f"the replicas may run on nodes that want different variants ({described})")
    targets = sorted({key for key, _ in picks.values()})
    variant = variants.pop()
    node_names = ", ".join(sorted(picks))
    return VariantChoice(
        variant,
        artifacts[variant],
        targets[0],
        f"recommended for {' and '.join(targets)}, the hardware of node(s) {node_names}",
    )
