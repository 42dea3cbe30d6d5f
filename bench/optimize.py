"""Optimizer variants against FP32, in one run: a 1.1 M-parameter digits MLP (64 -> 1024 -> 1024 -> 10) and
the digits CNN (8x8 images, conv 16 -> 32, dense 64).

Both models are trained by the trainer's own pipeline, then `gallery_optimizer.pipeline.optimize` builds
every variant and measures each the same way (ONNX Runtime, CPU, one intra-op thread; p50 of many calls).
Printed per variant: size ratio, latency ratio (FP32 / variant: above 1 is faster) at batch 1 and 32,
accuracy delta in points, and the recommendation.
Target: INT8 (the better of dynamic and static) at least 1.5x faster than FP32 at batch 32 on the MLP with
at most 1 point accuracy drop.

Run: .venv/bin/python bench/optimize.py [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from gallery_optimizer.pipeline import OptimizationReport, OptimizeInputs, optimize
from gallery_optimizer.policy import OptimizationPolicy
from gallery_trainer.pipeline import run_job
from gallery_trainer.spec import parse_spec

SPEEDUP_TARGET = 1.5
ACCURACY_BUDGET = 0.01
MODELS = {
    "mlp-1.1M": {"hidden": [1024, 1024]},
    "digits-cnn": {"architecture": "cnn", "channels": [16, 32], "hidden": [64]},
}


def train(name: str, model: dict, epochs: int, workdir: Path) -> OptimizeInputs:
    data = {"source": "builtin", "name": "digits"}
    if model.get("architecture") == "cnn":
        data["image_shape"] = [1, 8, 8]
    spec = parse_spec(
        {
            "name": name,
            "data": data,
            "model": model,
            "training": {"epochs": epochs, "batch_size": 64, "seed": 0},
            "engine": {"kind": "ddp", "ranks": 1},
        }
    )
    files = run_job(spec, workdir).files
    return OptimizeInputs(
        onnx=files["onnx"],
        weights=files["weights"],
        spec=json.loads(files["spec"].read_text()),
        train_split=files["train_split"],
        validation_split=files["validation_split"],
        test_split=files["test_split"],
    )


def print_report(name: str, report: OptimizationReport, seconds: float) -> None:
    fp32 = report.variant("fp32")
    print(
        f"\n{name}: FP32 accuracy {fp32.accuracy:.2%}, {fp32.size_bytes / 1024:.0f} KiB, optimized in {seconds:.0f} s"
    )
    print(f"{'variant':<18} {'size':>7} {'b1 speed':>9} {'b32 speed':>10} {'b32 p50 ms':>11} {'Δ acc pt':>9}  budget")
    for row in report.variants:
        if not row.ok:
            print(f"{row.name:<18} failed: {row.error}")
            continue
        size = row.size_bytes / fp32.size_bytes
        b1 = fp32.latency_b1_p50_ms / row.latency_b1_p50_ms
        b32 = fp32.latency_b32_p50_ms / row.latency_b32_p50_ms
        pays = row.name == "fp32" or (row.within_budget and (b32 >= 1.1 or size <= 0.9))
        mark = ("yes" if row.within_budget else "NO") + ("" if pays else "  (does not pay)")
        print(
            f"{row.name:<18} {size:>6.0%} {b1:>8.2f}x {b32:>9.2f}x {row.latency_b32_p50_ms:>11.3f} "
            f"{row.accuracy_delta * 100:>+9.2f}  {mark}"
        )
    print(f"recommended: {report.recommended} ({report.recommendation_reason})")
    for row in report.variants:
        for note in row.notes:
            print(f"  {row.name}: {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    policy = OptimizationPolicy(accuracy_budget=ACCURACY_BUDGET, student_hidden=[128])
    verdict = 0
    with tempfile.TemporaryDirectory(prefix="bench-optimize-") as tmp:
        for name, model in MODELS.items():
            inputs = train(name, model, args.epochs, Path(tmp) / name / "train")
            start = time.perf_counter()
            report = optimize(inputs, policy, Path(tmp) / name / "optimize", model=name, version=1)
            print_report(name, report, time.perf_counter() - start)
            if name != "mlp-1.1M":
                continue
            fp32 = report.variant("fp32")
            int8 = [report.variant(v) for v in ("int8_dynamic", "int8_static") if report.variant(v).ok]
            best = max(int8, key=lambda r: fp32.latency_b32_p50_ms / r.latency_b32_p50_ms, default=None)
            if best is None:
                print("MISS: no INT8 variant was built")
                verdict = 1
                continue
            speedup = fp32.latency_b32_p50_ms / best.latency_b32_p50_ms
            ok = speedup >= SPEEDUP_TARGET and best.accuracy_delta >= -ACCURACY_BUDGET
            print(
                f"\n{'PASS' if ok else 'MISS'}: {best.name} is {speedup:.2f}x faster than FP32 at batch 32 "
                f"(target >= {SPEEDUP_TARGET}x) with {best.accuracy_delta * 100:+.2f} points (budget -1)"
            )
            verdict |= 0 if ok else 1
    return verdict


if __name__ == "__main__":
    raise SystemExit(main())
