"""One optimization from files to report: build every variant the policy names, check and measure each
against FP32 the same way, and recommend one.

`optimize` blocks (torch, ONNX Runtime, child processes); call it from a worker thread. The caller hands
it files it already fetched and checked against their sha256; every ONNX file is verified as one
self-contained model before it is loaded, and every run of a graph (predictions, latency, peak memory,
INT8 calibration, the distillation teacher) happens in a child process under the time and memory limits
of `Limits` (GALLERY_EVALUATION_TIMEOUT_S, GALLERY_EVALUATION_MEMORY_BYTES).
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gallery_common.contracts.scoring import prediction_agreement, regression_scores, target_columns
from gallery_common.hardware import host_cpu
from gallery_common.onnx_safety import verify_self_contained_onnx
from gallery_common.sandbox import Limits
from gallery_common.targets import Target, Targets, host_targets
from gallery_common.telemetry import get_logger
from gallery_optimizer.edge_bundle import build_edge_bundle
from gallery_optimizer.measure import (
    MeasurementFailed,
    Split,
    int8_static_limited,
    load_split,
    macro_f1,
    peak_memory_bytes,
    run_model,
)
from gallery_optimizer.policy import BASELINE, OptimizationPolicy
from gallery_optimizer.report import OptimizationReport, VariantReport, recommend
from gallery_optimizer.target_measure import TargetMeasurement, measure_on_target
from gallery_optimizer.target_recommend import recommend_per_target

if TYPE_CHECKING:
    from gallery_optimizer.text_variants import TextFeatures

__all__ = [
    "OptimizationError",
    "OptimizationReport",
    "OptimizeInputs",
    "VariantReport",
    "build_edge_bundle",
    "optimize",
]

log = get_logger(__name__)
Progress = Callable[[str, float], None]


class OptimizationError(Exception):
    """The FP32 model or its data cannot be optimized at all (the message says why); FP32 stays deployable."""


@dataclass
class OptimizeInputs:
    """A validated version's files, fetched and sha256-checked: the FP32 ONNX (raw `features` in, `logits`
    out, or a regressor's predictions), the trainer's safetensors `weights` and stored `spec` JSON (needed
    by pruning), and the NPZ splits (`x` raw FP32 features, `y` labels or targets); `task` as the registry
    records it."""

    onnx: Path
    weights: Path | None
    spec: dict[str, Any] | None
    train_split: Path
    validation_split: Path
    test_split: Path
    class_names: list[str] | None = None
    task: str = "classification"


@dataclass
class _Data:
    train: Split
    validation: Split
    test: Split
    fp32_predictions: np.ndarray  # a classifier's top class per test row; a regressor's predictions [N, K]
    n_features: int
    limits: Limits
    texts: bool = False  # a text model on text splits: one string per row, the vectorizer in the graph
    regression: bool = False  # `y` holds targets [N, K] (made columns here), the model predicts them


TASKS = ("classification", "regression")


def _load(inputs: OptimizeInputs, limits: Limits) -> _Data:
    if inputs.task not in TASKS:
        raise OptimizationError(f"classifiers and regressors are optimized; this model's task is {inputs.task!r}")
    regression = inputs.task == "regression"
    try:
        verify_self_contained_onnx(inputs.onnx.read_bytes())
        splits = [load_split(p) for p in (inputs.train_split, inputs.validation_split, inputs.test_split)]
    except (OSError, ValueError) as exc:
        raise OptimizationError(str(exc)) from None
    train, validation, test = splits
    texts = _text_splits(splits, inputs.onnx)
    features = {0 if texts else s.x.shape[1] for s in splits}
    if len(features) != 1:
        raise OptimizationError(f"the splits have {sorted(features)} features; they must agree")
    try:
        fp32 = run_model(inputs.onnx, test.x, what="running the FP32 model on the test split", limits=limits)
    except MeasurementFailed as exc:
        raise OptimizationError(str(exc)) from None
    expected = fp32.input_width
    if expected is not None and features != {expected}:
        raise OptimizationError(f"the splits have {sorted(features)} features; the model takes {expected}")
    outputs = fp32.outputs
    if regression:
        if texts:
            raise OptimizationError("a text model is optimized as a classifier; this one is a regressor")
        return _regression_data(train, validation, test, outputs, features.pop(), limits)
    if outputs.ndim != 2 or outputs.shape[1] < 2:
        raise OptimizationError(
            f"the model outputs {outputs.shape[1:]} per row; a classifier gives one logit per class"
        )
    return _Data(train, validation, test, outputs.argmax(axis=1), features.pop(), limits, texts)


def _regression_data(
    train: Split, validation: Split, test: Split, predictions: np.ndarray, n_features: int, limits: Limits
) -> _Data:
    """A regressor's splits with their targets as columns [N, K], checked against what the model predicts."""
    train, validation, test = (Split(s.x, target_columns(s.y).astype(np.float32)) for s in (train, validation, test))
    splits = [train, validation, test]
    if predictions.ndim != 2:
        raise OptimizationError(f"the model predicts {predictions.shape[1:]} per row; a regressor gives [K]")
    for name, split in zip(_SPLITS, splits, strict=True):
        if split.y.shape[1] != predictions.shape[1]:
            given, predicted = split.y.shape[1], predictions.shape[1]
            raise OptimizationError(f"the {name} split holds {given} target(s) per row; the model predicts {predicted}")
        if not np.all(np.isfinite(split.y)):
            raise OptimizationError(f"the {name} split holds targets that are not finite numbers")
    return _Data(train, validation, test, predictions, n_features, limits, regression=True)


def _text_splits(splits: list[Split], model: Path) -> bool:
    """Whether the model and its splits are a text model's (strings) or a table model's (numbers); a mix
    is an OptimizationError naming what each holds."""
    from gallery_optimizer.text_variants import is_text_model

    kinds = {s.is_text for s in splits}
    if len(kinds) != 1:
        held = ", ".join(
            f"{name}: {'texts' if s.is_text else 'numbers'}" for name, s in zip(_SPLITS, splits, strict=True)
        )
        raise OptimizationError(f"the splits must all hold texts or all numbers ({held})")
    texts = kinds.pop()
    if is_text_model(verify_self_contained_onnx(model.read_bytes())) != texts:
        takes = "texts" if not texts else "numbers"
        raise OptimizationError(f"the model takes {takes} but its splits hold {'texts' if texts else 'numbers'}")
    return texts


_SPLITS = ("train", "validation", "test")


def _measure(name: str, path: Path, data: _Data, fp32: VariantReport | None) -> VariantReport:
    """`name` measured on the test split: latencies, size, memory and its score beside FP32's (`fp32`,
    None while FP32 itself is measured)."""
    run = run_model(path, data.test.x, what=f"measuring {name}", latency=True, limits=data.limits)
    b1, b32 = run.latency_b1, run.latency_b32
    if b1 is None or b32 is None:  # asked for above; a child that left them out did not measure
        raise MeasurementFailed(f"measuring {name} gave no latencies")
    row = VariantReport(
        name=name,
        path=path,
        size_bytes=float(path.stat().st_size),
        peak_memory_bytes=peak_memory_bytes(path, data.n_features, data.limits, data.test.x if data.texts else None),
        latency_b1_p50_ms=b1[0],
        latency_b1_p99_ms=b1[1],
        latency_b32_p50_ms=b32[0],
        latency_b32_p99_ms=b32[1],
        throughput_per_s=32_000.0 / b32[0] if b32[0] > 0 else None,
    )
    if data.regression:
        if run.outputs.shape != data.test.y.shape:
            given, expected = run.outputs.shape[1:], data.test.y.shape[1:]
            raise MeasurementFailed(f"{name} predicts {given} per row; the model predicts {expected}")
        scores = regression_scores(run.outputs, data.test.y)
        row.r2, row.rmse, row.mae = scores["r2"], scores["rmse"], scores["mae"]
        row.r2_delta = row.r2 - (row.r2 if fp32 is None or fp32.r2 is None else fp32.r2)
        row.agreement = prediction_agreement(run.outputs, data.fp32_predictions)
        return row
    predicted = run.outputs.argmax(axis=1)
    row.accuracy = float((predicted == data.test.y).mean())
    row.macro_f1 = macro_f1(data.test.y, predicted)
    row.agreement = float((predicted == data.fp32_predictions).mean())
    row.accuracy_delta = row.accuracy - (row.accuracy if fp32 is None or fp32.accuracy is None else fp32.accuracy)
    return row


def _build(
    name: str, inputs: OptimizeInputs, policy: OptimizationPolicy, data: _Data, workdir: Path
) -> tuple[Path, list[str]]:
    """Write variant `name` to `workdir/<name>.onnx`; the notes say what a reader should know about it."""
    out = workdir / f"{name}.onnx"
    if name in ("int8_dynamic", "int8_static"):
        from gallery_optimizer.quantize import int8_build, int8_dynamic, require_quantized

        build = int8_build(policy.int8_target, host_cpu())
        notes = [f"for {build.cpu_target}: {build.note}"]
        if name == "int8_dynamic":
            return require_quantized(int8_dynamic(inputs.onnx, out, reduce_range=build.reduce_range), name), notes
        calibrated = f"calibrated on {min(len(data.validation.x), 512)} validation rows"
        # calibrating runs the untrusted graph on data: in a child, under the same limits as a measurement
        built = int8_static_limited(
            inputs.onnx, out, data.validation.x, policy.seed, reduce_range=build.reduce_range, limits=data.limits
        )
        require_quantized(built, name)
        return built, [
            calibrated,
            *notes,
        ]
    if name == "fp16":
        from gallery_optimizer.quantize import fp16

        return fp16(inputs.onnx, out), ["meant for GPU serving; on a CPU FP16 arithmetic is emulated and rarely pays"]
    return _build_torch(name, inputs, policy, data, out)


def _cpu_target(name: str, policy: OptimizationPolicy) -> str | None:
    """The CPUs a variant is built for, where that differs by variant (INT8); None: any."""
    if not name.startswith("int8_"):
        return None
    from gallery_optimizer.quantize import int8_build

    return int8_build(policy.int8_target, host_cpu()).cpu_target


def _build_torch(
    name: str, inputs: OptimizeInputs, policy: OptimizationPolicy, data: _Data, out: Path
) -> tuple[Path, list[str]]:
    if data.texts and name == "distilled":
        return _distill_text(_text_features(inputs, data), policy, data, out)
    stored = stored_network(inputs.spec)
    if stored is None and name != "distilled":
        raise OptimizationError(
            f"{name} is built from the trainer's PyTorch weights and stored spec, and this version has no such spec"
            " (an imported model has neither)"
        )
    from gallery_common.nn import export_onnx
    from gallery_optimizer.prune import parameter_count, weight_sparsity

    notes: list[str]
    train = (data.train.x, data.train.y)
    validation = (data.validation.x, data.validation.y)
    n_features = data.n_features
    # a text model's network is pruned on its vectorizer's outputs, then put back behind that vectorizer
    text = _text_features(inputs, data) if data.texts and inputs.weights is not None else None
    if text is not None:
        train, validation, n_features = text.train, text.validation, text.width
    if name == "distilled":
        from gallery_optimizer.distill import distill

        model = distill(
            stored,
            lambda rows: run_model(inputs.onnx, rows, what="the teacher's predictions", limits=data.limits).outputs,
            train,
            validation,
            hidden=policy.student_hidden,
            epochs=policy.distill_epochs,
            temperature=policy.temperature,
            seed=policy.seed,
            regression=data.regression,
        )
        taught = "on the teacher's predictions" if data.regression else f"T={policy.temperature:g}"
        notes = [f"student MLP {policy.student_hidden}, {parameter_count(model):,} parameters, {taught}"]
        if stored is None:
            notes.append("no stored spec: the student standardises the raw features with the train rows' statistics")
    else:
        if inputs.weights is None or stored is None:
            raise OptimizationError(f"{name} needs the trainer's PyTorch weights, and this version has none")
        from gallery_common.nn import load_stored_model
        from gallery_optimizer.prune import magnitude_prune, structured_prune
        from gallery_optimizer.training import CLASSIFICATION
        from gallery_optimizer.training import regression as regression_objective

        teacher_model = load_stored_model(stored, inputs.weights)
        prune = magnitude_prune if name == "pruned_magnitude" else structured_prune
        objective = regression_objective(train[1]) if data.regression else CLASSIFICATION
        model = prune(
            teacher_model,
            policy.target_sparsity,
            train,
            validation,
            epochs=policy.finetune_epochs,
            seed=policy.seed,
            objective=objective,
        )
        if name == "pruned_magnitude":
            notes = [
                f"{weight_sparsity(model):.0%} of weights are zero; the ONNX graph stays dense, so it is no smaller "
                "or faster unless compressed or served by a sparse kernel"
            ]
        else:
            before, after = parameter_count(teacher_model), parameter_count(model)
            notes = [f"{policy.target_sparsity:.0%} of hidden units removed: {before:,} → {after:,} parameters"]
        notes.append(f"fine-tuned {policy.finetune_epochs} epoch(s)")
    export_onnx(model, n_features, out)
    if text is not None:
        text.attach(out)
    return out, notes


def stored_network(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """`spec` when it is the trainer's record of a network it trained (its job and architecture), which
    pruning and a student with the teacher's preprocessing are built from; None for any other spec (an
    import's names its features and nothing more)."""
    if spec is not None and isinstance(spec.get("job"), dict) and isinstance(spec.get("architecture"), dict):
        return spec
    return None


def _cpu_measurement(target: Target, row: VariantReport) -> TargetMeasurement:
    """The CPU target's record of a row: the figures the sandboxed CPU measurement already took."""
    return TargetMeasurement(
        target.key,
        target.hardware_class,
        target.provider,
        target.execution_provider,
        latency_b1_p50_ms=row.latency_b1_p50_ms,
        latency_b1_p99_ms=row.latency_b1_p99_ms,
        latency_b32_p50_ms=row.latency_b32_p50_ms,
        latency_b32_p99_ms=row.latency_b32_p99_ms,
        accuracy=row.accuracy,
        r2=row.r2,
        error=row.error,
    )


def _measure_targets(rows: list[VariantReport], targets: Targets, data: _Data, workdir: Path) -> None:
    """Give every row one measurement per present target (a failed row's say it was not built)."""
    for row in rows:
        for target in targets.present:
            if target.provider == "cpu":
                row.measurements.append(_cpu_measurement(target, row))
            elif not row.ok or row.path is None:
                row.measurements.append(
                    TargetMeasurement(
                        target.key,
                        target.hardware_class,
                        target.provider,
                        target.execution_provider,
                        error=f"not built: {row.error}",
                    )
                )
            else:
                row.measurements.append(
                    measure_on_target(
                        target,
                        row.name,
                        row.path,
                        data.test.x,
                        data.test.y,
                        limits=data.limits,
                        cache_dir=workdir / "engine-cache",
                    )
                )


def _text_features(inputs: OptimizeInputs, data: _Data) -> TextFeatures:
    """The text model cut at its vectorizer, with the training and validation texts vectorized by it."""
    from gallery_optimizer.text_variants import text_features

    return text_features(
        inputs.onnx, (data.train.x, data.train.y), (data.validation.x, data.validation.y), _runner(data)
    )


def _runner(data: _Data) -> Callable[[Path, np.ndarray, str], np.ndarray]:
    return lambda path, rows, what: run_model(path, rows, what=what, limits=data.limits).outputs


def _distill_text(features: TextFeatures, policy: OptimizationPolicy, data: _Data, out: Path) -> tuple[Path, list[str]]:
    """The distilled student behind the text model's own vectorizer (`text_variants`)."""
    from gallery_optimizer.text_variants import distill_text

    student = distill_text(
        features,
        out,
        _runner(data),
        hidden=policy.student_hidden,
        epochs=policy.distill_epochs,
        temperature=policy.temperature,
        seed=policy.seed,
    )
    return student.path, student.notes


def optimize(
    inputs: OptimizeInputs,
    policy: OptimizationPolicy,
    workdir: Path,
    *,
    model: str,
    version: int,
    on_progress: Progress | None = None,
    limits: Limits | None = None,
    targets: Targets | None = None,
) -> OptimizationReport:
    """Build, check and measure every variant of `policy` next to FP32 and recommend one; then measure
    each on every target of `targets` (default: what this host offers) and recommend one per target.

    A variant that fails (one that passes `limits` included: default from the settings) is recorded with
    its reason and the others go on. Raises OptimizationError only when the FP32 model or the splits
    themselves are unusable.
    """

    def progress(step: str, fraction: float) -> None:
        if on_progress is not None:
            on_progress(step, min(max(fraction, 0.0), 1.0))

    workdir.mkdir(parents=True, exist_ok=True)
    progress("loading the FP32 model and the splits", 0.0)
    data = _load(inputs, limits or Limits.from_settings())
    names = [BASELINE, *policy.variants]
    rows: list[VariantReport] = []
    fp32: VariantReport | None = None
    for index, name in enumerate(names):
        progress(f"building and measuring {name}", index / (len(names) + 1))
        try:
            if name == BASELINE:
                path, notes = workdir / "fp32.onnx", list[str]()
                path.write_bytes(inputs.onnx.read_bytes())
            else:
                path, notes = _build(name, inputs, policy, data, workdir)
            row = _measure(name, path, data, fp32)
            row.notes = notes
            row.cpu_target = _cpu_target(name, policy)
        except Exception as exc:
            if name == BASELINE:
                raise OptimizationError(f"the FP32 model cannot be measured: {exc}") from None
            log.warning("variant failed", variant=name, error=str(exc), trace=traceback.format_exc(limit=3))
            row = VariantReport(name=name, error=str(exc) or type(exc).__name__)
        if name == BASELINE:
            fp32 = row
        rows.append(row)
    recommended, reason = recommend(rows, policy.accuracy_budget)
    targets = targets or host_targets()
    progress(f"measuring on {', '.join(t.key for t in targets.present)}", len(names) / (len(names) + 1))
    _measure_targets(rows, targets, data, workdir)
    report = OptimizationReport(
        model,
        version,
        rows,
        recommended,
        reason,
        policy.accuracy_budget,
        task=inputs.task,
        measured_on=host_cpu().describe(),
        recommendations=recommend_per_target(rows, policy.accuracy_budget),
        targets=targets.describe(),
    )
    progress("writing the report", (len(names) + 0.5) / (len(names) + 1))
    (workdir / "report.json").write_text(json.dumps(report.to_json(), indent=2))
    (workdir / "report.md").write_text(report.to_markdown())
    report.write_chart(workdir / "report.png")
    progress("done", 1.0)
    return report
