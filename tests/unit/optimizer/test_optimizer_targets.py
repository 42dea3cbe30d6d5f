"""Measurements per target (hardware class + execution provider) and the recommendation per target.

The probe runs for real as a child process on this interpreter's CPU provider; the OpenVINO build is in
tests/integration/optimizer/test_optimizer_openvino.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gallery_common.events import ArtifactRef
from gallery_common.sandbox import Limits
from gallery_common.targets import Target
from gallery_optimizer.delivery import StoredOutputs, optimized_payload
from gallery_optimizer.report import OptimizationReport, VariantReport
from gallery_optimizer.target_measure import TargetMeasurement, measure_on_target, provider_options
from gallery_optimizer.target_recommend import recommend_per_target

LIMITS = Limits(timeout_s=120, memory_bytes=4 * 1024**3)
CPU = Target("cpu-x86-avx2", "cpu", sys.executable)
RNG = np.random.default_rng(0)
WEIGHTS = RNG.normal(size=(4, 3)).astype(np.float32)
X = RNG.normal(size=(300, 4)).astype(np.float32)
Y = (X @ WEIGHTS).argmax(axis=1)


def linear_model(path: Path) -> Path:
    """features (N, 4) -> logits (N, 3) = features @ WEIGHTS."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(WEIGHTS, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_variant_measured_on_a_target_carries_its_class_provider_latency_and_accuracy(tmp_path: Path) -> None:
    record = measure_on_target(
        CPU, "fp32", linear_model(tmp_path / "m.onnx"), X, Y, limits=LIMITS, cache_dir=tmp_path / "cache"
    )
    assert record.error is None and record.ok
    assert (record.target, record.hardware_class, record.provider) == ("cpu-x86-avx2/cpu", "cpu-x86-avx2", "cpu")
    assert record.execution_provider == "CPUExecutionProvider"
    assert record.accuracy == 1.0  # the model computes exactly the labels' logits
    for p50, p99 in (
        (record.latency_b1_p50_ms, record.latency_b1_p99_ms),
        (record.latency_b32_p50_ms, record.latency_b32_p99_ms),
    ):
        assert p50 is not None and p99 is not None and 0 < p50 <= p99


def test_a_model_the_provider_cannot_load_is_not_measurable_there_with_the_reason(tmp_path: Path) -> None:
    # a valid graph whose operator no build of ONNX Runtime implements (as OpenVINO's refuses IR 14)
    graph = helper.make_graph(
        [helper.make_node("Mystery", ["features"], ["logits"], domain="com.example")],
        "unknown-op",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    record = measure_on_target(CPU, "fp32", tmp_path / "m.onnx", X, Y, limits=LIMITS, cache_dir=tmp_path)
    assert not record.ok and record.latency_b32_p50_ms is None
    assert record.error is not None
    assert record.error.startswith("not measurable on cpu-x86-avx2/cpu: CPUExecutionProvider cannot load the model:")
    assert "Mystery" in record.error


def test_a_provider_onnx_runtime_silently_replaces_with_the_cpu_is_not_counted_as_measured(tmp_path: Path) -> None:
    # this interpreter's onnxruntime has no OpenVINO: it would run the model on the CPU provider instead
    fake_openvino = Target("cpu-x86-avx2", "openvino", sys.executable)
    record = measure_on_target(
        fake_openvino, "fp32", linear_model(tmp_path / "m.onnx"), X, Y, limits=LIMITS, cache_dir=tmp_path
    )
    assert record.error == (
        "not measurable on cpu-x86-avx2/openvino: ONNX Runtime put the model on CPUExecutionProvider, "
        "not OpenVINOExecutionProvider"
    )


def test_a_missing_interpreter_is_the_measurement_error(tmp_path: Path) -> None:
    gone = Target("cpu-x86-avx2", "openvino", str(tmp_path / "no-venv" / "python"))
    record = measure_on_target(gone, "fp32", linear_model(tmp_path / "m.onnx"), X, Y, limits=LIMITS, cache_dir=tmp_path)
    assert record.error is not None and record.error.startswith(
        "measuring fp32 on cpu-x86-avx2/openvino could not start"
    )


def test_tensorrt_keeps_an_engine_cache_per_variant_with_fp16_and_int8_for_the_qdq_variant(tmp_path: Path) -> None:
    trt = Target("gpu-nvidia-h100-80gb-hbm3", "tensorrt", sys.executable)
    static = provider_options(trt, "int8_static", tmp_path)
    assert static == {
        "trt_fp16_enable": "True",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(tmp_path / "int8_static"),
        "trt_int8_enable": "True",
    }
    assert "trt_int8_enable" not in provider_options(trt, "fp32", tmp_path)
    assert provider_options(Target("cpu-x86-avx2", "openvino", "python"), "fp32", tmp_path) == {}


def measured(
    target: str, b32: float | None, accuracy: float | None = 0.95, error: str | None = None
) -> TargetMeasurement:
    hardware_class, provider = target.split("/")
    return TargetMeasurement(
        target, hardware_class, provider, f"{provider}EP", latency_b32_p50_ms=b32, accuracy=accuracy, error=error
    )


def variant(name: str, *measurements: TargetMeasurement, accuracy: float = 0.95) -> VariantReport:
    return VariantReport(
        name=name,
        path=Path(f"/work/{name}.onnx"),
        accuracy=accuracy,
        accuracy_delta=accuracy - 0.95,
        latency_b32_p50_ms=measurements[0].latency_b32_p50_ms,
        measurements=list(measurements),
    )


AVX2_CPU, AVX2_OV = "cpu-x86-avx2/cpu", "cpu-x86-avx2/openvino"


def rows() -> list[VariantReport]:
    return [
        variant("fp32", measured(AVX2_CPU, 0.030), measured(AVX2_OV, 0.066)),
        # barely faster on the CPU provider; slower than FP32 under OpenVINO
        variant("int8_dynamic", measured(AVX2_CPU, 0.028, 0.948), measured(AVX2_OV, 0.090, 0.948), accuracy=0.948),
        # fastest under OpenVINO but 3 points worse there
        variant("distilled", measured(AVX2_CPU, 0.040), measured(AVX2_OV, 0.020, 0.92)),
    ]


def test_each_target_gets_the_fastest_variant_within_budget_on_its_own_figures() -> None:
    recommendations = recommend_per_target(rows(), 0.01)
    assert list(recommendations) == [AVX2_CPU, AVX2_OV]
    assert recommendations[AVX2_CPU].variant == "int8_dynamic"
    assert "1.07x FP32 there" in recommendations[AVX2_CPU].reason
    assert recommendations[AVX2_OV].variant == "fp32"
    assert recommendations[AVX2_OV].reason.startswith("fastest on cpu-x86-avx2/openvino (p50 0.066 ms at batch 32)")


def test_a_target_nothing_could_run_on_gets_no_recommendation_and_says_why() -> None:
    refused = "not measurable on cpu-x86-avx2/openvino: Unsupported model IR version: 14"
    variants = [
        variant("fp32", measured(AVX2_CPU, 0.03), measured(AVX2_OV, None, None, refused)),
        variant("int8_dynamic", measured(AVX2_CPU, 0.02), measured(AVX2_OV, None, None, refused)),
    ]
    recommendations = recommend_per_target(variants, 0.01)
    assert recommendations[AVX2_CPU].variant == "int8_dynamic"
    assert recommendations[AVX2_OV].variant is None
    assert recommendations[AVX2_OV].reason == (
        f"no variant could be measured on it (fp32: {refused}; int8_dynamic: {refused})"
    )


def test_fp32_refused_by_a_target_leaves_the_cpu_accuracy_as_the_reference() -> None:
    variants = [
        variant("fp32", measured(AVX2_CPU, 0.03), measured(AVX2_OV, None, None, "not measurable")),
        variant("int8_dynamic", measured(AVX2_CPU, 0.02), measured(AVX2_OV, 0.05, 0.90)),
        variant("pruned_structured", measured(AVX2_CPU, 0.02), measured(AVX2_OV, 0.06, 0.945)),
    ]
    assert recommend_per_target(variants, 0.01)[AVX2_OV].variant == "pruned_structured"


def report() -> OptimizationReport:
    variants = rows()
    return OptimizationReport(
        "digits",
        3,
        variants,
        "int8_dynamic",
        "fastest",
        recommendations=recommend_per_target(variants, 0.01),
        targets={"present": [AVX2_CPU, AVX2_OV], "absent": {"cuda": "no GPU", "tensorrt": "no GPU"}},
    )


def test_the_report_shows_every_measurement_with_its_hardware_and_the_recommendation_per_target() -> None:
    doc = json.loads(json.dumps(report().to_json()))
    assert doc["recommendations"][AVX2_OV]["variant"] == "fp32"
    assert doc["targets"]["absent"] == {"cuda": "no GPU", "tensorrt": "no GPU"}
    first = doc["variants"][1]["measurements"][1]
    assert (first["hardware_class"], first["provider"], first["latency_b32_p50_ms"]) == (
        "cpu-x86-avx2",
        "openvino",
        0.09,
    )
    markdown = report().to_markdown()
    assert "## Per hardware class and execution provider" in markdown
    assert f"| {AVX2_OV} | fp32 |" in markdown
    assert "| int8_dynamic | cpu-x86-avx2 | openvino |  | 0.090 |" in markdown
    assert "Not measured: cuda (no GPU); tensorrt (no GPU)" in markdown


def test_a_report_from_before_targets_renders_as_it_did() -> None:
    old = OptimizationReport("digits", 3, [VariantReport("fp32", Path("/w/fp32.onnx"), accuracy=0.9)], "fp32", "only")
    assert "Per hardware class" not in old.to_markdown()
    assert old.to_json()["recommendations"] == {}


def test_model_optimized_names_the_variant_per_target_that_was_stored() -> None:
    ref = ArtifactRef(uri="s3://gallery/x.onnx", sha256="0" * 64)
    stored = StoredOutputs(variants={"fp32": ref, "int8_dynamic": ref})
    payload = optimized_payload(report(), stored, "default")
    assert payload.recommended == "int8_dynamic"
    assert payload.recommendations == {AVX2_CPU: "int8_dynamic", AVX2_OV: "fp32"}


def test_a_per_target_variant_without_an_artifact_is_left_out_of_the_event() -> None:
    ref = ArtifactRef(uri="s3://gallery/x.onnx", sha256="0" * 64)
    payload = optimized_payload(report(), StoredOutputs(variants={"int8_dynamic": ref}), "default")
    assert payload.recommendations == {AVX2_CPU: "int8_dynamic"}
