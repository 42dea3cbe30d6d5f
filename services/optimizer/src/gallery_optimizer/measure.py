"""Running and measuring ONNX variants the same way: predictions, quality, latency, size and peak memory.

Every model is untrusted: it is verified as one self-contained ONNX file first, sessions are created from
the verified bytes, never from a path, and whatever runs the graph runs in a child process under a time
and memory limit (GALLERY_EVALUATION_TIMEOUT_S, GALLERY_EVALUATION_MEMORY_BYTES; `gallery_common.sandbox`),
so an ONNX `Loop` that never ends fails its measurement with that reason instead of freezing the job.
Latency is measured in that child on one intra-op thread (the machines this runs on are shared; one thread
makes variants comparable run to run). Peak memory is measured in a fresh interpreter: the model's bytes
plus resident-set growth from just before session creation to the peak after a batch-32 run (Linux VmHWM,
reset first). ONNX Runtime allocates outside Python's heap, so tracemalloc would miss nearly all of it.

A text model (one string input, the vectorizer inside the graph) is run and measured on rows of its text
split, never on zeros or empty strings: how long a vectorizer takes depends on the texts it reads.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gallery_common.contracts import Split, is_text_array, read_split
from gallery_common.contracts.names import INPUT_NAME, OUTPUT_NAME
from gallery_common.contracts.scoring import macro_f1
from gallery_common.onnx_safety import verify_self_contained_onnx
from gallery_common.sandbox import LimitExceeded, Limits, SandboxFailed, is_allocation_failure, run_limited

__all__ = [
    "MeasurementFailed",
    "ModelRun",
    "Split",
    "int8_static_limited",
    "latencies_ms",
    "load_split",
    "macro_f1",
    "model_rows",
    "peak_memory_bytes",
    "predict",
    "run_model",
    "session_from_file",
]

LATENCY_BUDGET_S = 0.6
MAX_RUNS = 400
MIN_RUNS = 20


class MeasurementFailed(Exception):
    """A model could not be run or measured (a limit, a runtime error); the message is the reason."""


def load_split(path: Path, max_bytes: int | None = None) -> Split:
    """An NPZ split (`x` FP32 raw features or unicode texts [N], `y` labels), read by
    `gallery_common.contracts`: capped at GALLERY_MAX_SPLIT_BYTES, nothing unpickled. ValueError
    (NpzRefused) names the file and the reason."""
    return read_split(path, max_bytes=max_bytes)


@dataclass
class ModelRun:
    """What running a model on rows gave: its outputs, its input width, and latencies when asked for."""

    outputs: np.ndarray
    input_width: int | None
    latency_b1: tuple[float, float] | None = None
    latency_b32: tuple[float, float] | None = None


def run_model(path: Path, x: np.ndarray, *, what: str, latency: bool = False, limits: Limits | None = None) -> ModelRun:
    """The model at `path` on every row of `x` (and its p50/p99 latency at batch 1 and 32 when `latency`),
    in a child process under `limits` (default: from the settings).

    MeasurementFailed says why it could not: "<what> exceeded its 300 s time limit", a runtime error.
    """
    limits = limits or Limits.from_settings()
    with tempfile.TemporaryDirectory(prefix="gallery-measure-") as tmp:
        rows = Path(tmp) / "x.npy"
        # a file, not a pickled argument: the child maps the rows instead of holding a second copy
        np.save(rows, model_rows(x), allow_pickle=False)
        answer = _limited(_run_in_child, (str(path), str(rows), latency), limits, what)
    (header_length,) = struct.unpack("!I", answer[:4])
    header = json.loads(answer[4 : 4 + header_length])
    outputs = np.load(io.BytesIO(answer[4 + header_length :]), allow_pickle=False)
    return ModelRun(
        outputs=outputs,
        input_width=header["input_width"],
        latency_b1=tuple(header["b1"]) if header["b1"] else None,  # type: ignore[arg-type]
        latency_b32=tuple(header["b32"]) if header["b32"] else None,  # type: ignore[arg-type]
    )


def int8_static_limited(
    fp32: Path, out: Path, calibration_x: np.ndarray, seed: int, *, reduce_range: bool, limits: Limits | None = None
) -> Path:
    """`quantize.int8_static` in a child process under `limits`: calibrating runs the untrusted graph."""
    limits = limits or Limits.from_settings()
    with tempfile.TemporaryDirectory(prefix="gallery-calibrate-") as tmp:
        rows = Path(tmp) / "x.npy"
        np.save(rows, model_rows(calibration_x), allow_pickle=False)
        _limited(_int8_static_in_child, (str(fp32), str(out), str(rows), seed, reduce_range), limits, "calibration")
    verify_self_contained_onnx(out.read_bytes())
    return out


def model_rows(x: np.ndarray) -> np.ndarray:
    """Rows as the model takes them, in a form `np.save` writes without pickling: texts as a contiguous
    unicode array [N], features as contiguous FP32."""
    if is_text_array(x):
        return np.ascontiguousarray(x)
    return np.ascontiguousarray(x, dtype=np.float32)


def _limited(target: Callable[..., bytes], args: tuple[object, ...], limits: Limits, what: str) -> bytes:
    try:
        return run_limited(target, args, limits=limits, what=what, preload=(__name__,))
    except LimitExceeded as exc:
        raise MeasurementFailed(str(exc)) from None
    except SandboxFailed as exc:
        raise MeasurementFailed(f"{what} failed: {exc}") from None


def _run_in_child(model_path: str, rows_path: str, latency: bool) -> bytes:
    """Runs in the sandbox: a 4-byte header length, a JSON header (input width, latencies), the outputs as .npy."""
    x = np.load(rows_path, mmap_mode="r", allow_pickle=False)
    session = session_from_file(Path(model_path))
    shape = session.get_inputs()[0].shape
    width = shape[1] if len(shape) == 2 else None  # a text model's rows are one string each
    outputs = predict(session, x)
    b1 = latencies_ms(session, x, 1) if latency else None
    b32 = latencies_ms(session, x, 32) if latency else None
    header = json.dumps({"input_width": width if isinstance(width, int) else None, "b1": b1, "b32": b32}).encode()
    buffer = io.BytesIO()
    np.save(buffer, outputs, allow_pickle=False)
    return struct.pack("!I", len(header)) + header + buffer.getvalue()


def _int8_static_in_child(fp32: str, out: str, rows_path: str, seed: int, reduce_range: bool) -> bytes:
    from gallery_optimizer.quantize import int8_static

    x = np.load(rows_path, allow_pickle=False)
    int8_static(Path(fp32), Path(out), x, seed, reduce_range=reduce_range)
    return b""


def session_from_file(path: Path, threads: int = 1):  # type: ignore[no-untyped-def]
    """An ONNX Runtime CPU session of the verified model at `path`."""
    import onnxruntime as ort

    data = path.read_bytes()
    verify_self_contained_onnx(data)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def predict(session, x: np.ndarray, batch: int = 512) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The model's outputs on `x` (its `logits`, or its only output), computed in batches."""
    feed, output = _input_name(session), _output_name(session)
    outputs = [
        session.run([output], {feed: np.ascontiguousarray(x[i : i + batch])})[0] for i in range(0, len(x), batch)
    ]
    return np.concatenate(outputs).astype(np.float32)


def latencies_ms(session, x: np.ndarray, batch: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """p50 and p99 milliseconds per call at `batch` rows, after warm-up, for up to LATENCY_BUDGET_S."""
    rows = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))
    if not is_text_array(rows):
        rows = rows.astype(np.float32)
    feed, output = {_input_name(session): rows}, _output_name(session)
    for _ in range(5):
        session.run([output], feed)
    times: list[float] = []
    deadline = time.perf_counter() + LATENCY_BUDGET_S
    while len(times) < MAX_RUNS and (len(times) < MIN_RUNS or time.perf_counter() < deadline):
        start = time.perf_counter_ns()
        session.run([output], feed)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def _input_name(session) -> str:  # type: ignore[no-untyped-def]
    """The model's one input: `features` for the trainer's table models, `text` for text models."""
    inputs = session.get_inputs()
    return INPUT_NAME if any(i.name == INPUT_NAME for i in inputs) else str(inputs[0].name)


def _output_name(session) -> str:  # type: ignore[no-untyped-def]
    names = [o.name for o in session.get_outputs()]
    return OUTPUT_NAME if OUTPUT_NAME in names or len(names) != 1 else str(names[0])


# VmHWM is the peak resident set of this process image; writing 5 to clear_refs resets it to the current
# RSS, so import-time peaks do not count (getrusage's ru_maxrss would also carry the parent's peak over exec)
_PEAK_PROBE = r"""
import resource
import sys

memory = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
import numpy as np
import onnxruntime as ort

def status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field + " is not in /proc/self/status")

data = open(sys.argv[1], "rb").read()
features = int(sys.argv[2])
# a text model's batch is 32 of its own texts (sys.argv[4], a .npy); a table model's, zeros
batch = np.load(sys.argv[4], allow_pickle=False) if len(sys.argv) > 4 else np.zeros((32, features), np.float32)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status_kib("VmRSS")
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.log_severity_level = 3
session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
session.run(None, {session.get_inputs()[0].name: batch})
print(max(status_kib("VmHWM") - before, 0) * 1024 + len(data))
"""


def peak_memory_bytes(
    path: Path, n_features: int, limits: Limits | None = None, texts: np.ndarray | None = None
) -> float:
    """Bytes a fresh process holds for this model: the file's bytes plus resident growth from session
    creation and one batch-32 run (the child imports numpy and onnxruntime before measuring). A text
    model's batch is 32 rows of `texts` (its split's), a table model's 32 rows of `n_features` zeros.

    The probe runs under `limits` (default: from the settings); MeasurementFailed says which it passed.
    """
    limits = limits or Limits.from_settings()
    verify_self_contained_onnx(path.read_bytes())
    with tempfile.TemporaryDirectory(prefix="gallery-peak-") as tmp:
        sample: list[str] = []
        if texts is not None:
            np.save(Path(tmp) / "texts.npy", np.ascontiguousarray(np.resize(texts, 32)), allow_pickle=False)
            sample = [str(Path(tmp) / "texts.npy")]
        return _probe_peak(path, n_features, limits, sample)


def _probe_peak(path: Path, n_features: int, limits: Limits, sample: list[str]) -> float:
    try:
        completed = subprocess.run(
            [sys.executable, "-c", _PEAK_PROBE, str(path), str(n_features), str(limits.memory_bytes), *sample],
            capture_output=True,
            text=True,
            timeout=limits.timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise MeasurementFailed(f"the memory probe exceeded its {limits.describe_time()} time limit") from None
    if completed.returncode != 0:
        tail = completed.stderr.strip().splitlines()[-1:] or ["no output"]
        if tail[0].startswith("MemoryError") or is_allocation_failure(tail[0]):
            raise MeasurementFailed(f"the memory probe exceeded its {limits.describe_memory()} memory limit")
        raise MeasurementFailed(f"the memory probe failed: {tail[0]}")
    return float(json.loads(completed.stdout.strip().splitlines()[-1]))
