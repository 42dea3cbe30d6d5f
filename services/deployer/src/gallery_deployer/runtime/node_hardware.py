"""The hardware of the nodes a deployment's replicas may run on, as hardware classes.

- Local runtime: this host, one node: its CPU's class from /proc/cpuinfo and its GPU's from
  `nvidia-smi --query-gpu=name` (`gallery_common.hardware`).
- Kubernetes: the schedulable nodes the Deployment's pods may land on (for a GPU deployment, those
  matching the GPU node selector), classed by their labels: `kubernetes.io/arch`, Node Feature
  Discovery's `feature.node.kubernetes.io/cpu-cpuid.<FEATURE>=true` (AVX2, AVX512BW, AVX512VNNI, AVXVNNI,
  AMXINT8, ASIMDDP) and NVIDIA GPU feature discovery's `nvidia.com/gpu.product`. A node without Node
  Feature Discovery is only `cpu-x86` / `cpu-arm64`, so no variant measured on a finer class is assumed
  to fit it. Listing nodes needs `list` on `nodes` (cluster-scoped: a ClusterRole).
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from gallery_common.hardware import gpu_class, host_cpu, node_classes
from gallery_common.targets import nvidia_smi_names

from .base import ServerSpec


@dataclass(frozen=True)
class NodeHardware:
    """One node a replica may run on and its hardware classes (None: unknown, or no GPU)."""

    node: str
    cpu_class: str | None
    gpu_class: str | None = None


@runtime_checkable
class KnowsNodeHardware(Protocol):
    """A runtime that can say which nodes a deployment's replicas may run on; one that cannot runs them on
    this host (the local runtime)."""

    async def node_hardware(self, spec: ServerSpec) -> list[NodeHardware]: ...


def local_node_hardware(gpu_names: Callable[[], str] = nvidia_smi_names) -> list[NodeHardware]:
    """This host as the one node the local runtime runs replicas on (blocking: it asks nvidia-smi)."""
    try:
        names = [line.strip() for line in gpu_names().splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        names = []
    gpu = gpu_class(names[0]) if names else None
    return [NodeHardware(socket.gethostname(), host_cpu().hardware_class, gpu)]


def nodes_hardware(
    nodes: Iterable[Mapping[str, Any]], *, gpu: bool, gpu_node_selector: Mapping[str, str]
) -> list[NodeHardware]:
    """The nodes (Kubernetes Node objects as JSON) a deployment's pods may land on, with their classes:
    schedulable ones, and for a GPU deployment only those whose labels match `gpu_node_selector`."""
    found = []
    for node in nodes:
        meta = node.get("metadata") or {}
        labels: dict[str, str] = meta.get("labels") or {}
        if (node.get("spec") or {}).get("unschedulable"):
            continue
        if gpu and any(labels.get(key) != value for key, value in gpu_node_selector.items()):
            continue
        classes = node_classes(labels)
        found.append(NodeHardware(str(meta.get("name", "")), classes.cpu, classes.gpu))
    return found
