"""Evaluate an untrusted ONNX model on a held-out split with ONNX Runtime, never the trainer's numbers.

Everything here blocks (ONNX Runtime, numpy, file reads): call it from a worker thread.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort

from gallery_common.events import Signature
from gallery_common.onnx_safety import UnsafeOnnxModel, verify_self_contained_onnx

from .metrics import classification_metrics, percentile_ms, regression_metrics
from .signature import graph_tensors

Task = Literal["classification", "regression"]
DEFAULT_INPUT = "features"
DEFAULT_OUTPUT = "logits"
_BATCH_ROWS = 4096


class EvaluationFailed(Exception):
    """The model or its test split cannot be evaluated; the message is the reason to reject it."""


@dataclass(frozen=True)
class LatencyConfig:
    """How latency is measured: batch 1, one thread, `samples` timed runs after `warmup` untimed ones."""

    samples: int = 200
    warmup: int = 20


@dataclass(frozen=True)
class HeldOutSplit:
    """Raw features `x` [N, F] (FP32) and labels or targets `y` [N] or [N, K]."""

    x: np.ndarray
    y: np.ndarray

    @classmethod
    def load(cls, path: Path) -> HeldOutSplit:
        """Read an NPZ with `x` and `y`; nothing is unpickled."""
        try:
            with np.load(path, allow_pickle=False) as npz:
                missing = [k for k in ("x", "y") if k not in npz.files]
                if missing:
                    raise EvaluationFailed(f"test split lacks array(s) {', '.join(missing)} (has: {npz.files})")
                x, y = npz["x"], npz["y"]
        except EvaluationFailed:
            raise
        except Exception as exc:
            raise EvaluationFailed(f"test split is not a readable NPZ file: {exc}") from None
        if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
            raise EvaluationFailed(f"test split x must be numeric [N, F], got {x.dtype} {list(x.shape)}")
        if len(x) == 0:
            raise EvaluationFailed("test split is empty")
        if len(y) != len(x):
            raise EvaluationFailed(f"test split has {len(x)} rows in x but {len(y)} in y")
        return cls(x.astype(np.float32, copy=False), y)


class OnnxModel:
    """A verified, self-contained ONNX model in an ONNX Runtime session pinned to one CPU thread."""

    def __init__(self, data: bytes, signature: Signature | None = None) -> None:
        """Verify `data` (see `verify_self_contained_onnx`) and load those same bytes; EvaluationFailed if bad."""
        try:
            self.proto: onnx.ModelProto = verify_self_contained_onnx(data)
        except UnsafeOnnxModel as exc:
            raise EvaluationFailed(str(exc)) from None
        inputs, outputs = graph_tensors(self.proto)
        if len(inputs) != 1:
            names = ", ".join(repr(t.name) for t in inputs) or "none"
            raise EvaluationFailed(f"the ONNX model must take one input ({DEFAULT_INPUT!r}); it takes {names}")
        self.input = inputs[0]
        if self.input.datatype != "FP32" or len(self.input.shape) != 2:
            raise EvaluationFailed(
                f"the ONNX input {self.input.name!r} must be FP32 [-1, F]; it is {self.input.datatype} "
                f"{list(self.input.shape)}"
            )
        self.output_name = _pick_output([t.name for t in outputs], signature)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise EvaluationFailed(f"ONNX Runtime cannot load the model: {_first_line(exc)}") from None

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The chosen output for every row of `x`, run in batches."""
        width = self.input.shape[1]
        if width >= 0 and x.shape[1] != width:
            raise EvaluationFailed(f"the model takes {width} features but the test split has {x.shape[1]}")
        parts = []
        try:
            for start in range(0, len(x), _BATCH_ROWS):
                (out,) = self.session.run([self.output_name], {self.input.name: x[start : start + _BATCH_ROWS]})
                parts.append(np.asarray(out))
        except Exception as exc:
            raise EvaluationFailed(f"the model failed on the test split: {_first_line(exc)}") from None
        result = np.concatenate(parts)
        if len(result) != len(x):
            raise EvaluationFailed(f"the model returned {len(result)} rows for {len(x)} inputs")
        return result

    def latency_ms(self, x: np.ndarray, config: LatencyConfig) -> tuple[float, float]:
        """p50 and p99 latency of one-row calls, cycling through the rows of `x`."""
        rows = [x[i : i + 1] for i in range(min(len(x), config.samples))]
        feed = self.input.name
        run = self.session.run
        outputs = [self.output_name]
        for i in range(config.warmup):
            run(outputs, {feed: rows[i % len(rows)]})
        durations = []
        for i in range(config.samples):
            row = rows[i % len(rows)]
            started = time.perf_counter()
            run(outputs, {feed: row})
            durations.append(time.perf_counter() - started)
        return percentile_ms(durations, 50), percentile_ms(durations, 99)


def _pick_output(names: list[str], signature: Signature | None) -> str:
    """The declared output if the graph has it, else `logits`, else the graph's only output."""
    wanted = [signature.outputs[0].name] if signature and signature.outputs else []
    for name in [*wanted, DEFAULT_OUTPUT]:
        if name in names:
            return name
    if len(names) == 1:
        return names[0]
    expected = " or ".join(repr(n) for n in dict.fromkeys([*wanted, DEFAULT_OUTPUT]))
    raise EvaluationFailed(f"the ONNX model has no output {expected} (its outputs: {', '.join(names) or 'none'})")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def evaluate(
    model: OnnxModel,
    split: HeldOutSplit,
    task: Task,
    class_names: Sequence[str] | None = None,
    latency: LatencyConfig | None = None,
) -> dict[str, Any]:
    """The evaluation report: task metrics on `split`, n_test, latency_p50_ms and latency_p99_ms."""
    outputs = model.predict(split.x)
    if not np.issubdtype(outputs.dtype, np.floating):
        raise EvaluationFailed(f"the model output {model.output_name!r} is {outputs.dtype}, not floating point")
    bad_rows = int((~np.isfinite(outputs.reshape(len(outputs), -1))).any(axis=1).sum())
    if bad_rows:
        raise EvaluationFailed(f"the model produced NaN or infinite outputs for {bad_rows} of {len(outputs)} rows")
    if task == "classification":
        report = _classification(outputs, split.y, class_names)
    else:
        report = _regression(outputs, split.y)
    p50, p99 = model.latency_ms(split.x, latency or LatencyConfig())
    report["latency_p50_ms"] = p50
    report["latency_p99_ms"] = p99
    return report


def _classification(logits: np.ndarray, y: np.ndarray, class_names: Sequence[str] | None) -> dict[str, Any]:
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise EvaluationFailed(f"a classifier must output logits [N, C] with C >= 2, got {list(logits.shape)}")
    n_classes = logits.shape[1]
    if class_names and len(class_names) != n_classes:
        raise EvaluationFailed(f"the model outputs {n_classes} classes but the event names {len(class_names)}")
    labels = _class_indices(y, n_classes, class_names)
    return classification_metrics(logits, labels, class_names)


def _class_indices(y: np.ndarray, n_classes: int, class_names: Sequence[str] | None) -> np.ndarray:
    if y.ndim != 1:
        raise EvaluationFailed(f"test split y must be one label per row, got shape {list(y.shape)}")
    if y.dtype.kind in "US":
        if not class_names:
            raise EvaluationFailed("test split labels are strings but the event names no classes")
        index = {name: i for i, name in enumerate(class_names)}
        unknown = sorted({str(v) for v in y} - index.keys())
        if unknown:
            raise EvaluationFailed(f"test split has labels that are not class names: {unknown[:5]}")
        return np.array([index[str(v)] for v in y], dtype=np.int64)
    if y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0):
        raise EvaluationFailed("test split labels must be class indices, found fractional values")
    if y.dtype.kind not in "iuf":
        raise EvaluationFailed(f"test split labels must be class indices, not {y.dtype}")
    labels = y.astype(np.int64)
    if labels.min() < 0 or labels.max() >= n_classes:
        raise EvaluationFailed(
            f"test split labels range over {labels.min()}..{labels.max()} but the model has {n_classes} classes"
        )
    return labels


def _regression(predictions: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    if not np.issubdtype(y.dtype, np.number):
        raise EvaluationFailed(f"regression targets must be numeric, not {y.dtype}")
    targets = y.reshape(len(y), -1)
    predicted = predictions.reshape(len(predictions), -1)
    if predicted.shape != targets.shape:
        raise EvaluationFailed(
            f"the model predicts {predicted.shape[1]} values per row but the test split has {targets.shape[1]}"
        )
    return regression_metrics(predicted, targets)
