"""ONNX Runtime's CPU execution provider against OpenVINO's, on this host, on the optimizer bench's models.

The models are bench/optimize.py's: the 1.1 M-parameter digits MLP (64 -> 1024 -> 1024 -> 10) and the digits
CNN, trained by the trainer's pipeline, each as FP32 and as INT8 dynamic and static (built for this CPU, as
the optimizer builds them). Every variant is measured by the optimizer's own per-target measurement
(`gallery_optimizer.target_measure`): a child process of the target's interpreter (this venv for the CPU
provider, .venv-openvino for OpenVINO), one intra-op thread, p50 of many calls after warm-up.

Printed per model, variant and target (`<hardware class>/<provider>`): µs per run at batch 1 and 32, each
as a ratio to the CPU provider's (below 1: faster than the CPU provider), and the accuracy there. Without
.venv-openvino (make install builds it) only the CPU provider is measured, and the reason is printed; on a
machine with a GPU and onnxruntime-gpu the CUDA and TensorRT targets are measured too (TensorRT with FP16,
INT8 for the QDQ variant and an engine cache), so scripts/gpu_check.sh can run this bench there.

Run: .venv/bin/python bench/providers.py [--epochs N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from optimize import MODELS, train  # bench/optimize.py, beside this file

from gallery_common.hardware import host_cpu
from gallery_common.sandbox import Limits
from gallery_common.targets import host_targets
from gallery_optimizer.measure import load_split
from gallery_optimizer.quantize import int8_build, int8_dynamic, int8_static
from gallery_optimizer.target_measure import TargetMeasurement, measure_on_target

LIMITS = Limits(timeout_s=300, memory_bytes=4 * 1024**3)


def variants(fp32: Path, calibration: np.ndarray, folder: Path) -> dict[str, Path]:
    """FP32 and its INT8 variants, built for this CPU as the optimizer's 'auto' target builds them."""
    build = int8_build("auto", host_cpu())
    return {
        "fp32": fp32,
        "int8_dynamic": int8_dynamic(fp32, folder / "int8_dynamic.onnx", reduce_range=build.reduce_range),
        "int8_static": int8_static(fp32, folder / "int8_static.onnx", calibration, reduce_range=build.reduce_range),
    }


def us(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f}"


def ratio(value: float | None, cpu: float | None) -> str:
    return "-" if value is None or not cpu else f"{value / cpu:.2f}"


def print_model(name: str, rows: dict[str, dict[str, TargetMeasurement]], cpu_key: str) -> None:
    """One line per variant and target: µs per run at batch 1 and 32, each as a ratio to the CPU provider's."""
    print(f"\n{name}")
    print(f"{'variant':<14} {'target':<36} {'b1 µs':>7} {'/CPU':>6} {'b32 µs':>8} {'/CPU':>6} {'accuracy':>9}")
    for variant, by_target in rows.items():
        cpu = by_target[cpu_key]
        for key, m in by_target.items():
            if m.error:
                print(f"{variant:<14} {key:<36} {m.error}")
                continue
            print(
                f"{variant:<14} {key:<36} {us(m.latency_b1_p50_ms):>7} "
                f"{ratio(m.latency_b1_p50_ms, cpu.latency_b1_p50_ms):>6} {us(m.latency_b32_p50_ms):>8} "
                f"{ratio(m.latency_b32_p50_ms, cpu.latency_b32_p50_ms):>6} {(m.accuracy or 0):>9.2%}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (speed does not depend on them)")
    args = parser.parse_args()
    targets = host_targets()
    cpu = host_cpu()
    wanted = list(targets.present)  # CPU first; OpenVINO here; CUDA and TensorRT on a GPU machine
    print(f"hardware class {cpu.hardware_class} ({cpu.model}, {cpu.cores} cores)")
    print(f"targets: {', '.join(t.key for t in wanted)}")
    for provider, why in targets.absent.items():
        print(f"{provider} not measured: {why}")
    with tempfile.TemporaryDirectory(prefix="bench-providers-") as tmp:
        for name, model in MODELS.items():
            inputs = train(name, model, args.epochs, Path(tmp) / name / "train")
            test = load_split(inputs.test_split)
            calibration = load_split(inputs.validation_split).x
            built = variants(inputs.onnx, calibration, Path(tmp) / name)
            rows: dict[str, dict[str, TargetMeasurement]] = {}
            for variant, path in built.items():
                # the CPU provider through the same probe as OpenVINO, so both pay the same harness
                rows[variant] = {
                    t.key: measure_on_target(
                        t,
                        variant,
                        path,
                        test.x,
                        test.y,
                        limits=LIMITS,
                        cache_dir=Path(tmp) / "cache",
                    )
                    for t in wanted
                }
            print_model(name, rows, wanted[0].key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
