"""The optimizer measures variants on OpenVINO's execution provider for real, out of `.venv-openvino`
(onnxruntime-openvino replaces the `onnxruntime` module, so it has an interpreter of its own; `make test`
builds it from requirements/openvino.txt)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from gallery_common.hardware import host_cpu
from gallery_common.nn import export_onnx
from gallery_common.sandbox import Limits
from gallery_common.targets import Targets, default_openvino_python, detect_targets
from gallery_optimizer.pipeline import OptimizeInputs, optimize
from gallery_optimizer.policy import OptimizationPolicy
from gallery_optimizer.target_measure import measure_on_target

OPENVINO_PYTHON = default_openvino_python()
pytestmark = pytest.mark.skipif(
    not OPENVINO_PYTHON.exists(),
    reason=f"no OpenVINO interpreter at {OPENVINO_PYTHON} (make .venv-openvino builds it)",
)
LIMITS = Limits(timeout_s=300, memory_bytes=4 * 1024**3)


@pytest.fixture(scope="module")
def targets() -> Targets:
    return detect_targets()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> OptimizeInputs:
    """A 16 -> 64 -> 4 MLP trained a little on separable blobs, exported to ONNX, with its three splits."""
    folder = tmp_path_factory.mktemp("openvino")
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(4, 16))
    y = rng.integers(0, 4, size=900)
    x = (centres[y] + rng.normal(size=(900, 16))).astype(np.float32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(torch.from_numpy(x[:600])), torch.from_numpy(y[:600])).backward()
        optimiser.step()
    export_onnx(model.eval(), 16, folder / "model.onnx")
    splits = {}
    for name, part in (("train", slice(0, 600)), ("validation", slice(600, 750)), ("test", slice(750, 900))):
        splits[name] = folder / f"{name}.npz"
        np.savez(splits[name], x=x[part], y=y[part])
    return OptimizeInputs(
        onnx=folder / "model.onnx",
        weights=None,
        spec=None,
        train_split=splits["train"],
        validation_split=splits["validation"],
        test_split=splits["test"],
    )


def test_this_host_offers_openvino_on_its_cpu_class(targets: Targets) -> None:
    keys = [t.key for t in targets.present]
    cpu = host_cpu().hardware_class
    assert keys[:2] == [f"{cpu}/cpu", f"{cpu}/openvino"], targets.absent
    assert targets.present[1].python == str(OPENVINO_PYTHON)


def test_every_variant_is_measured_and_recommended_on_the_openvino_provider(
    inputs: OptimizeInputs, targets: Targets, tmp_path: Path
) -> None:
    policy = OptimizationPolicy(variants=["int8_dynamic"])
    report = optimize(inputs, policy, tmp_path / "work", model="blobs", version=1, limits=LIMITS, targets=targets)
    cpu = host_cpu().hardware_class
    openvino = f"{cpu}/openvino"
    for row in report.variants:
        by_target = {m.target: m for m in row.measurements}
        assert set(by_target) >= {f"{cpu}/cpu", openvino}, row.name
        measured = by_target[openvino]
        assert measured.error is None, measured.error
        assert (measured.hardware_class, measured.execution_provider) == (cpu, "OpenVINOExecutionProvider")
        assert measured.latency_b1_p50_ms is not None and measured.latency_b1_p50_ms > 0
        assert measured.latency_b32_p50_ms is not None and measured.latency_b32_p50_ms > 0
        # OpenVINO computes the same classes as the CPU provider on this easy problem
        assert measured.accuracy is not None and row.accuracy is not None
        assert abs(measured.accuracy - row.accuracy) <= 0.02
    assert report.recommendations[openvino].variant in ("fp32", "int8_dynamic")
    assert report.recommendations[f"{cpu}/cpu"].variant in ("fp32", "int8_dynamic")
    written = json.loads((tmp_path / "work" / "report.json").read_text())
    assert written["recommendations"][openvino]["variant"] == report.recommendations[openvino].variant
    assert written["targets"]["present"][:2] == [f"{cpu}/cpu", openvino]
    assert f"| {openvino} |" in (tmp_path / "work" / "report.md").read_text()


def test_a_model_openvino_cannot_read_is_reported_not_measurable_there_with_the_reason(
    inputs: OptimizeInputs, targets: Targets, tmp_path: Path
) -> None:
    # onnx 1.23 writes IR version 14 by default; ORT-OpenVINO 1.24 reads up to 13
    model = onnx.load(str(inputs.onnx))
    model.ir_version = 14
    onnx.save(model, str(tmp_path / "ir14.onnx"))
    test = np.load(inputs.test_split)
    openvino = targets.present[1]
    record = measure_on_target(
        openvino, "fp32", tmp_path / "ir14.onnx", test["x"], test["y"], limits=LIMITS, cache_dir=tmp_path
    )
    assert record.error == (
        f"not measurable on {openvino.key}: OpenVINOExecutionProvider cannot load the model: "
        "Unsupported model IR version: 14, max supported IR version: 13"
    )
    assert record.latency_b32_p50_ms is None
