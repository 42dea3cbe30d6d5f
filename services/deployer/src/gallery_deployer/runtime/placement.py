"""GPU placement: pack model-server replicas onto GPUs by memory (first-fit decreasing).

The local runtime turns a plan into `CUDA_VISIBLE_DEVICES` per replica; the Kubernetes runtime turns
it into scheduling hints (a preferred node affinity and the plan as an annotation), since there the
scheduler and the device plugin make the final choice.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gallery_common.telemetry import get_logger

log = get_logger(__name__)

GPU_PLAN_ANNOTATION = "modelgallery.io/gpu-plan"
HOSTNAME_LABEL = "kubernetes.io/hostname"
NVIDIA_SMI_QUERY = [
    "nvidia-smi",
    "--query-gpu=index,memory.total,memory.used",
    "--format=csv,noheader,nounits",
]


@dataclass(frozen=True)
class GpuDevice:
    """One GPU of a node's inventory; memory in MiB as nvidia-smi reports it."""

    node: str
    index: int
    memory_mb: int
    used_mb: int = 0

    def __post_init__(self) -> None:
        if self.index < 0 or self.memory_mb < 0 or self.used_mb < 0:
            raise ValueError(f"GPU {self.node}/{self.index}: index and memory must not be negative")

    @property
    def free_mb(self) -> int:
        return max(self.memory_mb - self.used_mb, 0)

    @property
    def key(self) -> tuple[str, int]:
        return (self.node, self.index)


@dataclass(frozen=True)
class PlacementRequest:
    """`replicas` replicas of one deployment, each needing `gpu_memory_mb` on a single GPU."""

    deployment_id: str
    replicas: int
    gpu_memory_mb: int

    def __post_init__(self) -> None:
        if self.replicas < 0:
            raise ValueError(f"{self.deployment_id}: replicas must not be negative, got {self.replicas}")
        if self.gpu_memory_mb < 0:
            raise ValueError(f"{self.deployment_id}: gpu_memory_mb must not be negative, got {self.gpu_memory_mb}")


@dataclass(frozen=True)
class UnplacedReplica:
    """A replica no GPU could take, and why."""

    deployment_id: str
    replica: int
    gpu_memory_mb: int
    reason: str


@dataclass(frozen=True)
class GpuUsage:
    """One GPU after the plan: memory used before it, memory the plan adds, and who got it."""

    node: str
    index: int
    memory_mb: int
    used_before_mb: int
    planned_mb: int
    replicas: tuple[tuple[str, int], ...] = ()  # (deployment_id, replica index)

    @property
    def used_mb(self) -> int:
        return self.used_before_mb + self.planned_mb

    @property
    def free_mb(self) -> int:
        return max(self.memory_mb - self.used_mb, 0)

    @property
    def utilisation(self) -> float:
        """Share of the GPU's memory in use after the plan, 0.0 to 1.0."""
        return min(self.used_mb / self.memory_mb, 1.0) if self.memory_mb else 0.0


@dataclass(frozen=True)
class Placement:
    """A plan: where each replica goes, which found no room, and how full each GPU ends up."""

    assignments: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # id → (node, gpu) per replica
    unplaced: list[UnplacedReplica] = field(default_factory=list)
    gpus: list[GpuUsage] = field(default_factory=list)

    @property
    def utilisation(self) -> dict[tuple[str, int], float]:
        """(node, gpu index) → share of its memory in use after the plan."""
        return {(g.node, g.index): g.utilisation for g in self.gpus}

    def nodes_for(self, deployment_id: str) -> list[str]:
        """The distinct nodes a deployment's replicas were planned on, in plan order."""
        return list(dict.fromkeys(node for node, _ in self.assignments.get(deployment_id, [])))

    def remaining(self) -> list[GpuDevice]:
        """The inventory as it stands once the plan runs: feed it to the next `plan_placement`."""
        return [GpuDevice(g.node, g.index, g.memory_mb, g.used_mb) for g in self.gpus]


def plan_placement(requests: Iterable[PlacementRequest], gpus: Iterable[GpuDevice]) -> Placement:
    """Pack every replica onto one GPU with first-fit decreasing by memory.

    Replicas are taken largest first (ties by deployment id, then replica number) and each goes to
    the first GPU, in (node, index) order, with enough free memory; a replica is never split across
    GPUs. The result depends only on the inputs' contents, not their order. Memory a GPU already
    uses (`used_mb`) is respected. A replica that fits nowhere is listed in `unplaced` with the
    reason; its deployment's other replicas are still placed.
    """
    inventory = sorted(gpus, key=lambda g: g.key)
    seen: set[tuple[str, int]] = set()
    for gpu in inventory:
        if gpu.key in seen:
            raise ValueError(f"GPU {gpu.node}/{gpu.index} is listed twice")
        seen.add(gpu.key)
    replicas = sorted(
        ((r.gpu_memory_mb, r.deployment_id, i) for r in requests for i in range(r.replicas)),
        key=lambda item: (-item[0], item[1], item[2]),
    )
    free = [g.free_mb for g in inventory]
    planned = [0] * len(inventory)
    taken: list[list[tuple[str, int]]] = [[] for _ in inventory]
    placed: dict[str, list[tuple[int, tuple[str, int]]]] = {}
    unplaced: list[UnplacedReplica] = []
    for need, deployment, replica in replicas:
        slot = next((i for i, room in enumerate(free) if room >= need), None)
        if slot is None:
            unplaced.append(UnplacedReplica(deployment, replica, need, _no_room_reason(need, inventory, free)))
            continue
        free[slot] -= need
        planned[slot] += need
        taken[slot].append((deployment, replica))
        placed.setdefault(deployment, []).append((replica, inventory[slot].key))
    assignments = {d: [gpu for _, gpu in sorted(slots)] for d, slots in sorted(placed.items())}
    usage = [
        GpuUsage(g.node, g.index, g.memory_mb, g.used_mb, planned[i], tuple(taken[i])) for i, g in enumerate(inventory)
    ]
    return Placement(assignments, unplaced, usage)


def _no_room_reason(need: int, inventory: Sequence[GpuDevice], free: Sequence[int]) -> str:
    if not inventory:
        return f"no GPU has {need} MB free: the inventory has no GPUs"
    best = max(range(len(inventory)), key=lambda i: (free[i], -i))
    gpu = inventory[best]
    return f"no GPU has {need} MB free (the most is {free[best]} MB on {gpu.node} GPU {gpu.index})"


def parse_nvidia_smi(text: str, node: str) -> list[GpuDevice]:
    """GPUs from `nvidia-smi --query-gpu=index,memory.total,memory.used --format=csv,noheader,nounits`.

    A line that is not three integers (e.g. `[N/A]` on a GPU in a bad state) is skipped with a warning.
    """
    devices: list[GpuDevice] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        try:
            index, total, used = (int(f) for f in fields)
            devices.append(GpuDevice(node, index, total, used))
        except ValueError:
            log.warning("nvidia_smi_line_skipped", line=line.strip())
    return devices


def _run_nvidia_smi() -> str:
    return subprocess.run(NVIDIA_SMI_QUERY, capture_output=True, text=True, check=True, timeout=10).stdout


def detect_gpus(node: str | None = None, run: Callable[[], str] = _run_nvidia_smi) -> list[GpuDevice]:
    """This machine's GPUs via nvidia-smi; an empty list when it is absent or fails. Blocking."""
    try:
        output = run()
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("no_gpus_detected", reason=f"{type(exc).__name__}: {exc}")
        return []
    return parse_nvidia_smi(output, node or socket.gethostname())


def scheduling_hints(placement: Placement, deployment_id: str) -> dict[str, Any]:
    """Kubernetes hints for one deployment: `{"affinity": ..., "annotations": {...}}`, or `{}` when unplanned.

    The affinity *prefers* the planned nodes (matched on `kubernetes.io/hostname`) rather than
    requiring them: the scheduler still sees the cluster as it is now, which may differ from the plan.
    """
    slots = placement.assignments.get(deployment_id)
    if not slots:
        return {}
    plan = [{"node": node, "gpu": index} for node, index in slots]
    preferred = {
        "weight": 100,
        "preference": {
            "matchExpressions": [
                {"key": HOSTNAME_LABEL, "operator": "In", "values": placement.nodes_for(deployment_id)}
            ]
        },
    }
    return {
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [preferred]}},
        "annotations": {GPU_PLAN_ANNOTATION: json.dumps(plan, separators=(",", ":"))},
    }
