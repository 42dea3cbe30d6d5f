"""Evaluate an untrusted ONNX model on a held-out split with ONNX Runtime, never the trainer's numbers.

The model runs in a child process (`gallery_common.sandbox`) under a wall-time and a memory limit
(GALLERY_EVALUATION_TIMEOUT_S, GALLERY_EVALUATION_MEMORY_BYTES): an ONNX `Loop` with a trip count of
2**40 or a node that allocates gigabytes is rejected with that reason instead of freezing the gate.
Parsing and checking the model and reading the split happen here; everything that runs the graph happens
in the child.

A text model (one BYTES input `text` [-1], its vectorizer inside the graph) is evaluated on a text split
(`x` a unicode array [N], `gallery_common.contracts.splits`) exactly as a tabular one on numeric rows; a
model and a split of different kinds are rejected with that reason.

Everything here blocks (child processes, numpy, file reads): call it from a worker thread.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from gallery_common.contracts import NpzMissingArrays, NpzRefused, is_text_array, read_split
from gallery_common.events import Signature
from gallery_common.onnx_safety import UnsafeOnnxModel, verify_self_contained_onnx
from gallery_common.sandbox import LimitExceeded, Limits, SandboxFailed, is_allocation_failure, run_limited

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
    """Raw features `x` [N, F] (FP32), or texts (unicode [N]), and labels or targets `y` [N] or [N, K]."""

    x: np.ndarray
    y: np.ndarray

    @classmethod
    def load(cls, path: Path, max_bytes: int | None = None) -> HeldOutSplit:
        """Read the NPZ split at `path` (`gallery_common.contracts`: capped, nothing unpickled)."""
        try:
            split = read_split(path, name="test split", max_bytes=max_bytes)
        except NpzMissingArrays as exc:
            missing = ", ".join(exc.missing)
            raise EvaluationFailed(f"test split lacks array(s) {missing} (has: {exc.found})") from None
        except NpzRefused as exc:
            raise EvaluationFailed(str(exc)) from None
        return cls(split.x, split.y)

    @property
    def is_text(self) -> bool:
        """The rows are texts, one per row."""
        return is_text_array(self.x)

    def describe(self) -> str:
        """What the rows are, for reasons: "texts [150]" or "numeric features [150, 4]"."""
        return f"texts [{len(self.x)}]" if self.is_text else f"numeric features {list(self.x.shape)}"


class OnnxModel:
    """A verified, self-contained ONNX model with its one input, FP32 [-1, F] (features) or BYTES [-1] (texts,
    `is_text`), and the output to evaluate.

    Nothing here runs the graph: `evaluate` does, in a child process under limits.
    """

    def __init__(self, data: bytes, signature: Signature | None = None) -> None:
        """Verify `data` (see `verify_self_contained_onnx`) and pick its input and output; EvaluationFailed if bad."""
        try:
            self.proto: onnx.ModelProto = verify_self_contained_onnx(data)
        except UnsafeOnnxModel as exc:
            raise EvaluationFailed(str(exc)) from None
        inputs, outputs = graph_tensors(self.proto)
        if len(inputs) != 1:
            names = ", ".join(repr(t.name) for t in inputs) or "none"
            raise EvaluationFailed(f"the ONNX model must take one input ({DEFAULT_INPUT!r}); it takes {names}")
        self.input = inputs[0]
        self.is_text = self.input.datatype == "BYTES" and len(self.input.shape) == 1
        if not self.is_text and (self.input.datatype != "FP32" or len(self.input.shape) != 2):
            raise EvaluationFailed(
                f"the ONNX input {self.input.name!r} must be FP32 [-1, F] (features) or BYTES [-1] (texts); it is "
                f"{self.input.datatype} {list(self.input.shape)}"
            )
        self.output_name = _pick_output([t.name for t in outputs], signature)
        self.data = data

    @property
    def width(self) -> int:
        """Features per row (-1: not fixed, or a text model, whose rows are one text each)."""
        return -1 if self.is_text else self.input.shape[1]

    def check_split(self, split: HeldOutSplit, what: str = "the test split") -> None:
        """EvaluationFailed unless `split` holds what the model takes: texts for a text model, numeric rows
        for the others."""
        if self.is_text == split.is_text:
            return
        takes = (
            f"texts (input {self.input.name!r} BYTES [-1])"
            if self.is_text
            else f"numeric features (input {self.input.name!r} {self.input.datatype} {list(self.input.shape)})"
        )
        raise EvaluationFailed(f"the model takes {takes} but {what} holds {split.describe()}")


class ModelSession:
    """The model in an ONNX Runtime session pinned to one CPU thread; only ever built in a sandboxed child.

    `rows` names what it runs on in its reasons ("the model failed on the test split: ...").
    """

    def __init__(
        self, data: bytes, input_name: str, width: int, output_name: str, rows: str = "the test split"
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            _raise_if_out_of_memory(exc)
            raise EvaluationFailed(f"ONNX Runtime cannot load the model: {_first_line(exc)}") from None
        self.input_name = input_name
        self.width = width
        self.output_name = output_name
        self.rows = rows

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The chosen output for every row of `x`, run in batches."""
        if self.width >= 0 and x.ndim == 2 and x.shape[1] != self.width:
            raise EvaluationFailed(f"the model takes {self.width} features but {self.rows} has {x.shape[1]}")
        parts = []
        try:
            for start in range(0, len(x), _BATCH_ROWS):
                feed = {self.input_name: np.ascontiguousarray(x[start : start + _BATCH_ROWS])}
                (out,) = self.session.run([self.output_name], feed)
                parts.append(np.asarray(out))
        except Exception as exc:
            _raise_if_out_of_memory(exc)
            raise EvaluationFailed(f"the model failed on {self.rows}: {_first_line(exc)}") from None
        result = np.concatenate(parts)
        if len(result) != len(x):
            raise EvaluationFailed(f"the model returned {len(result)} rows for {len(x)} inputs")
        return result

    def latency_ms(self, x: np.ndarray, config: LatencyConfig) -> tuple[float, float]:
        """p50 and p99 latency of one-row calls, cycling through the rows of `x`."""
        rows = [np.ascontiguousarray(x[i : i + 1]) for i in range(min(len(x), config.samples))]
        feed = self.input_name
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


def _raise_if_out_of_memory(exc: Exception) -> None:
    """An allocation that failed under the child's memory limit is the limit's reason, not the model's."""
    if is_allocation_failure(str(exc)):
        raise MemoryError(str(exc)) from None


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
    limits: Limits | None = None,
    preload: Sequence[str] = (),
) -> dict[str, Any]:
    """The evaluation report: task metrics on `split`, n_test, latency_p50_ms and latency_p99_ms.

    The model runs in a child process under `limits` (default: from the settings); one that passes them
    raises EvaluationFailed with that reason ("evaluation exceeded its 300 s time limit"). `preload` names
    more modules for the sandbox's forkserver, for the gate's later runs (it starts with the first run).
    """
    model.check_split(split)
    limits = limits or Limits.from_settings()
    with tempfile.TemporaryDirectory(prefix="gallery-evaluation-") as tmp:
        folder = Path(tmp)
        # files, not pickled arguments: the child maps the split instead of holding a second copy
        (folder / "model.onnx").write_bytes(model.data)
        np.save(folder / "x.npy", model_rows(split.x), allow_pickle=False)
        np.save(folder / "y.npy", split.y, allow_pickle=False)
        job = (str(folder), model.input.name, model.width, model.output_name, task, list(class_names or []), latency)
        answer = run_in_sandbox(
            _evaluate_in_child,
            job,
            limits,
            what="evaluation",
            preload=(__name__, *preload),
            failure=EvaluationFailed,
            crashed="the model could not be evaluated",
        )
    return dict(answer["report"])


def model_rows(x: np.ndarray) -> np.ndarray:
    """Rows as a model takes them and `np.save` writes them without pickling: texts as a contiguous unicode
    array, features as contiguous FP32."""
    if is_text_array(x):
        return np.ascontiguousarray(x)
    return np.ascontiguousarray(x, dtype=np.float32)


def run_in_sandbox(
    target: Callable[..., bytes],
    job: Sequence[Any],
    limits: Limits,
    *,
    what: str,
    preload: Sequence[str],
    failure: type[Exception],
    crashed: str,
) -> dict[str, Any]:
    """`target(*job)` in a sandboxed child that answers a JSON object: the object, or `failure` with the
    reason (a limit the child passed; `crashed` and what happened when it raised or died; the `error` it
    answered)."""
    try:
        answer = run_limited(target, job, limits=limits, what=what, preload=preload)
    except LimitExceeded as exc:
        raise failure(str(exc)) from None
    except SandboxFailed as exc:
        raise failure(f"{crashed}: {exc}") from None
    result = json.loads(answer)
    if "error" in result:
        raise failure(result["error"])
    return dict(result)


def _evaluate_in_child(
    folder: str,
    input_name: str,
    width: int,
    output_name: str,
    task: Task,
    class_names: list[str],
    latency: LatencyConfig | None,
) -> bytes:
    """Runs in the sandbox: the report as JSON (`{"report": ...}`), or `{"error": reason}`."""
    here = Path(folder)
    x = np.load(here / "x.npy", mmap_mode="r", allow_pickle=False)
    y = np.load(here / "y.npy", allow_pickle=False)
    try:
        session = ModelSession((here / "model.onnx").read_bytes(), input_name, width, output_name)
        report = _report(session, x, y, task, class_names or None, latency or LatencyConfig())
    except EvaluationFailed as exc:
        return json.dumps({"error": str(exc)}).encode()
    return json.dumps({"report": report}, default=_plain).encode()


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _report(
    session: ModelSession,
    x: np.ndarray,
    y: np.ndarray,
    task: Task,
    class_names: Sequence[str] | None,
    latency: LatencyConfig,
) -> dict[str, Any]:
    outputs = session.predict(x)
    if not np.issubdtype(outputs.dtype, np.floating):
        raise EvaluationFailed(f"the model output {session.output_name!r} is {outputs.dtype}, not floating point")
    bad_rows = int((~np.isfinite(outputs.reshape(len(outputs), -1))).any(axis=1).sum())
    if bad_rows:
        raise EvaluationFailed(f"the model produced NaN or infinite outputs for {bad_rows} of {len(outputs)} rows")
    report = _classification(outputs, y, class_names) if task == "classification" else _regression(outputs, y)
    p50, p99 = session.latency_ms(x, latency)
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
