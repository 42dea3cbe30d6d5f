"""A variant measured on one execution target: latency and its score (accuracy, a regressor's r2) with the
hardware class and the provider they came from.

The CPU provider's figures are the ones `measure.run_model` takes in this interpreter's sandbox. Every
other target runs `target_probe.py` in that target's interpreter as a child process (OpenVINO's build of
ONNX Runtime lives in a venv of its own), given a copy of the verified model, under the same time and
memory limits as any measurement. On TensorRT the probe lets TensorRT build FP16 kernels (and INT8 ones
for a QDQ model) and keeps the built engines in a cache folder, so a model server with the same cache
does not build them again; the score is taken on the target, so the budget sees what FP16 costs.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gallery_common.contracts.scoring import regression_scores
from gallery_common.onnx_safety import verify_self_contained_onnx
from gallery_common.sandbox import Limits, is_allocation_failure
from gallery_common.targets import Target
from gallery_optimizer.measure import model_rows

PROBE = Path(__file__).with_name("target_probe.py")


@dataclass
class TargetMeasurement:
    """One variant on one target (`<hardware class>/<provider>`); figures are None when `error` says why
    the variant could not be measured there. Latencies are milliseconds per call."""

    target: str
    hardware_class: str
    provider: str
    execution_provider: str
    latency_b1_p50_ms: float | None = None
    latency_b1_p99_ms: float | None = None
    latency_b32_p50_ms: float | None = None
    latency_b32_p99_ms: float | None = None
    accuracy: float | None = None
    r2: float | None = None  # a regressor's score, where a classifier has accuracy
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.latency_b32_p50_ms is not None

    @property
    def score(self) -> float | None:
        return self.accuracy if self.accuracy is not None else self.r2


@dataclass(frozen=True)
class TargetRecommendation:
    """The variant recommended for one target, or None with `reason` saying why there is none."""

    target: str
    variant: str | None
    reason: str

    def to_json(self) -> dict[str, str | None]:
        return asdict(self)


def provider_options(target: Target, variant: str, cache_dir: Path) -> dict[str, str]:
    """ONNX Runtime options of `target`'s provider for `variant`: TensorRT's FP16 (INT8 too for the QDQ
    `int8_static`) and its engine cache under `cache_dir/<variant>`; none for the others."""
    if target.provider != "tensorrt":
        return {}
    options = {
        "trt_fp16_enable": "True",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_dir / variant),
    }
    if variant == "int8_static":
        options["trt_int8_enable"] = "True"
    return options


def measure_on_target(
    target: Target,
    variant: str,
    model: Path,
    x: np.ndarray,
    y: np.ndarray,
    *,
    limits: Limits,
    cache_dir: Path,
) -> TargetMeasurement:
    """`variant` (the ONNX file `model`) on `target`: latency at batch 1 and 32 and its score on (`x`, `y`):
    accuracy, or r2 where `y` holds a regressor's targets as columns [N, K] (float).

    Never raises for the model's sake: a provider that refuses the model, a limit passed or a crash is
    the measurement's `error`.
    """
    record = TargetMeasurement(target.key, target.hardware_class, target.provider, target.execution_provider)
    data = model.read_bytes()
    verify_self_contained_onnx(data)
    options = provider_options(target, variant, cache_dir)
    if "trt_engine_cache_path" in options:
        Path(options["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
    what = f"measuring {variant} on {target.key}"
    with tempfile.TemporaryDirectory(prefix="gallery-target-") as tmp:
        folder = Path(tmp)
        (folder / "model.onnx").write_bytes(data)  # the bytes verified above, not the path again
        np.save(folder / "x.npy", model_rows(x), allow_pickle=False)  # a text model's rows stay strings
        command = [
            target.python,
            str(PROBE),
            str(folder / "model.onnx"),
            str(folder / "x.npy"),
            target.execution_provider,
            json.dumps(options),
            str(limits.memory_bytes),
            str(folder / "outputs.npy"),
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=limits.timeout_s, check=False)
        except subprocess.TimeoutExpired:
            record.error = f"{what} exceeded its {limits.describe_time()} time limit"
            return record
        except OSError as exc:
            record.error = f"{what} could not start {target.python}: {exc}"
            return record
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            if tail.startswith("MemoryError") or is_allocation_failure(tail):
                record.error = f"{what} exceeded its {limits.describe_memory()} memory limit"
            else:
                record.error = f"{what} failed: {tail}"
            return record
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        if "error" in answer:
            record.error = f"not measurable on {target.key}: {answer['error']}"
            return record
        outputs = np.load(folder / "outputs.npy", allow_pickle=False)
    record.latency_b1_p50_ms, record.latency_b1_p99_ms = answer["b1"]
    record.latency_b32_p50_ms, record.latency_b32_p99_ms = answer["b32"]
    if y.ndim == 2:
        record.r2 = regression_scores(outputs, y)["r2"] if outputs.shape == y.shape else None
        if record.r2 is None:
            record.error = f"{what} gave {outputs.shape[1:]} per row; the targets are {y.shape[1:]}"
    else:
        record.accuracy = float((outputs.argmax(axis=1) == y).mean())
    return record
