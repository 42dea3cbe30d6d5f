"""GPU placement on simulated inventories: first-fit decreasing, used memory, nodes, nvidia-smi."""

from __future__ import annotations

import json
import random
import subprocess

import pytest

from gallery_deployer.runtime.placement import (
    GPU_PLAN_ANNOTATION,
    GpuDevice,
    Placement,
    PlacementRequest,
    detect_gpus,
    parse_nvidia_smi,
    plan_placement,
    scheduling_hints,
)


def placed_count(placement: Placement) -> int:
    return sum(len(slots) for slots in placement.assignments.values())


def test_decreasing_order_packs_what_first_fit_in_input_order_cannot() -> None:
    gpus = [GpuDevice("node-a", 0, 10_000), GpuDevice("node-a", 1, 10_000)]
    small = PlacementRequest("small", replicas=2, gpu_memory_mb=4_000)
    large = PlacementRequest("large", replicas=2, gpu_memory_mb=6_000)

    # First fit in arrival order: the small replicas fill GPU 0 to 8 GB, one large takes GPU 1,
    # and the second large finds 2 GB and 4 GB free.
    first = plan_placement([small], gpus)
    in_order = plan_placement([large], first.remaining())
    assert placed_count(first) + placed_count(in_order) == 3
    assert [u.deployment_id for u in in_order.unplaced] == ["large"]

    ffd = plan_placement([small, large], gpus)
    assert ffd.unplaced == []
    assert ffd.assignments == {
        "large": [("node-a", 0), ("node-a", 1)],
        "small": [("node-a", 0), ("node-a", 1)],
    }
    assert ffd.utilisation == {("node-a", 0): 1.0, ("node-a", 1): 1.0}


def test_a_replica_larger_than_any_gpu_is_unplaced_with_the_reason() -> None:
    gpus = [GpuDevice("node-a", 0, 16_000, used_mb=1_000), GpuDevice("node-b", 0, 24_000, used_mb=4_000)]
    plan = plan_placement([PlacementRequest("llm", 1, 40_000), PlacementRequest("mlp", 1, 2_000)], gpus)

    assert plan.assignments == {"mlp": [("node-a", 0)]}
    [unplaced] = plan.unplaced
    assert (unplaced.deployment_id, unplaced.replica, unplaced.gpu_memory_mb) == ("llm", 0, 40_000)
    assert unplaced.reason == "no GPU has 40000 MB free (the most is 20000 MB on node-b GPU 0)"


def test_with_no_gpus_every_replica_is_unplaced_and_says_so() -> None:
    plan = plan_placement([PlacementRequest("mlp", 2, 500)], [])
    assert plan.assignments == {}
    assert [u.reason for u in plan.unplaced] == ["no GPU has 500 MB free: the inventory has no GPUs"] * 2


def test_memory_already_in_use_is_respected() -> None:
    gpus = [GpuDevice("node-a", 0, 16_000, used_mb=13_000), GpuDevice("node-a", 1, 16_000, used_mb=2_000)]
    plan = plan_placement([PlacementRequest("vision", 3, 4_000)], gpus)

    # GPU 0 has only 3 GB left, so all three replicas share GPU 1 (2 + 12 GB of 16).
    assert plan.assignments == {"vision": [("node-a", 1)] * 3}
    usage = {(g.node, g.index): g for g in plan.gpus}
    assert usage[("node-a", 0)].planned_mb == 0
    assert usage[("node-a", 1)].used_mb == 14_000
    assert usage[("node-a", 1)].free_mb == 2_000
    assert plan.utilisation[("node-a", 1)] == pytest.approx(14_000 / 16_000)


def test_replicas_spread_over_nodes_and_hints_prefer_those_nodes() -> None:
    gpus = [
        GpuDevice("node-b", 0, 8_000),
        GpuDevice("node-a", 0, 8_000),
        GpuDevice("node-c", 0, 8_000, used_mb=7_000),
    ]
    plan = plan_placement([PlacementRequest("digits-v3-fp32", 2, 6_000)], gpus)
    assert plan.assignments == {"digits-v3-fp32": [("node-a", 0), ("node-b", 0)]}

    hints = scheduling_hints(plan, "digits-v3-fp32")
    [preferred] = hints["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["preference"]["matchExpressions"] == [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-a", "node-b"]}
    ]
    assert json.loads(hints["annotations"][GPU_PLAN_ANNOTATION]) == [
        {"node": "node-a", "gpu": 0},
        {"node": "node-b", "gpu": 0},
    ]
    assert scheduling_hints(plan, "not-planned") == {}


def test_the_plan_does_not_depend_on_input_order() -> None:
    gpus = [
        GpuDevice(f"node-{n}", i, 12_000, used_mb=(n * 1_000 + i * 500) % 5_000) for n in range(3) for i in range(2)
    ]
    requests = [PlacementRequest(f"model-{k}", replicas=k % 3 + 1, gpu_memory_mb=1_000 + 900 * k) for k in range(8)]
    reference = plan_placement(requests, gpus)
    shuffler = random.Random(7)
    for _ in range(5):
        shuffled_requests, shuffled_gpus = requests[:], gpus[:]
        shuffler.shuffle(shuffled_requests)
        shuffler.shuffle(shuffled_gpus)
        assert plan_placement(shuffled_requests, shuffled_gpus) == reference
    assert placed_count(reference) + len(reference.unplaced) == sum(r.replicas for r in requests)


def test_a_gpu_listed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="node-a/0 is listed twice"):
        plan_placement([], [GpuDevice("node-a", 0, 8_000), GpuDevice("node-a", 0, 8_000)])


def test_nvidia_smi_output_is_parsed_and_bad_lines_skipped() -> None:
    text = "0, 81559, 1024\n1, 81559, 0\n\n2, [N/A], [N/A]\n"
    assert parse_nvidia_smi(text, "gpu-node-1") == [
        GpuDevice("gpu-node-1", 0, 81_559, 1_024),
        GpuDevice("gpu-node-1", 1, 81_559, 0),
    ]


def test_detect_gpus_is_empty_without_nvidia_smi() -> None:
    def missing() -> str:
        raise FileNotFoundError("nvidia-smi")

    def failing() -> str:
        raise subprocess.CalledProcessError(9, ["nvidia-smi"], stderr="NVIDIA-SMI has failed")

    assert detect_gpus(run=missing) == []
    assert detect_gpus(run=failing) == []
    assert detect_gpus(node="n1", run=lambda: "0, 16384, 10\n") == [GpuDevice("n1", 0, 16_384, 10)]
