"""ONNX Runtime's CPU execution provider against OpenVINO's, on this host, on the optimizer bench's models.

The models are bench/optimize.py's: the 1.1 M-parameter digits MLP (64 -> 1024 -> 1024 -> 10) and the digits
CNN, trained by the trainer's pipeline, each as FP32 and as INT8 dynamic and static (built for this CPU, as
the optimizer builds them). Every variant is measured by the optimizer's own per-target measurement
(`gallery_optimizer.target_measure`): a child process of the target's interpreter (this venv for the CPU
provider, .venv-openvino for OpenVINO), one intra-op thread, p50 of many calls after warm-up.

Printed per model and variant: µs per run at batch 1 and 32 on each provider, the ratio OpenVINO / CPU
(below 1: OpenVINO is faster), the accuracy on each, and the hardware class the figures belong to.
Without .venv-openvino (make install builds it) only the CPU column is printed, with the reason.

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
from gallery_common.targets import Targets, host_targets
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


def ratio(openvino: float | None, cpu: float | None) -> str:
    return "-" if openvino is None or not cpu else f"{openvino / cpu:.2f}"


def print_model(name: str, rows: dict[str, dict[str, TargetMeasurement]], targets: Targets) -> None:
    cpu_key = targets.present[0].key
    ov_key = next((t.key for t in targets.present if t.provider == "openvino"), None)
    print(f"\n{name}")
    print(
        f"{'variant':<14} {'CPU b1 µs':>10} {'OV b1 µs':>9} {'OV/CPU':>7} {'CPU b32 µs':>11} {'OV b32 µs':>10} "
        f"{'OV/CPU':>7} {'CPU acc':>8} {'OV acc':>7}"
    )
    for variant, by_target in rows.items():
        cpu = by_target[cpu_key]
        ov = by_target.get(ov_key) if ov_key else None
        print(
            f"{variant:<14} {us(cpu.latency_b1_p50_ms):>10} {us(ov and ov.latency_b1_p50_ms):>9} "
            f"{ratio(ov and ov.latency_b1_p50_ms, cpu.latency_b1_p50_ms):>7} {us(cpu.latency_b32_p50_ms):>11} "
            f"{us(ov and ov.latency_b32_p50_ms):>10} {ratio(ov and ov.latency_b32_p50_ms, cpu.latency_b32_p50_ms):>7} "
            f"{(cpu.accuracy or 0):>8.2%} {((ov and ov.accuracy) or 0):>7.2%}"
        )
        for measured in by_target.values():
            if measured.error:
                print(f"  {variant} on {measured.target}: {measured.error}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (speed does not depend on them)")
    args = parser.parse_args()
    targets = host_targets()
    cpu = host_cpu()
    wanted = [t for t in targets.present if t.provider in ("cpu", "openvino")]
    print(f"hardware class {cpu.hardware_class} ({cpu.model}, {cpu.cores} cores)")
    print(f"targets: {', '.join(t.key for t in wanted)}")
    if "openvino" in targets.absent:
        print(f"OpenVINO not measured: {targets.absent['openvino']}")
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
            print_model(name, rows, targets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
