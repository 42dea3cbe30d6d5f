"""Running and measuring ONNX variants the same way: predictions, quality, latency, size and peak memory.

Every model is verified as one self-contained ONNX file first and sessions are created from the verified
bytes, never from a path. Latency is measured in this process on one intra-op thread (the machines this
runs on are shared; one thread makes variants comparable run to run). Peak memory is measured in a fresh
child process: the model's bytes plus resident-set growth from just before session creation to the peak
after a batch-32 run (Linux VmHWM, reset first). ONNX Runtime allocates outside Python's heap, so
tracemalloc would miss nearly all of it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gallery_common.nn import INPUT_NAME, OUTPUT_NAME
from gallery_common.onnx_safety import verify_self_contained_onnx

LATENCY_BUDGET_S = 0.6
MAX_RUNS = 400
MIN_RUNS = 20


@dataclass
class Split:
    """A data split: raw FP32 features and labels."""

    x: np.ndarray
    y: np.ndarray


def load_split(path: Path) -> Split:
    """An NPZ split (`x` FP32 raw features, `y` labels); ValueError naming what is missing."""
    with np.load(path, allow_pickle=False) as data:
        if "x" not in data or "y" not in data:
            raise ValueError(f"{path.name}: a split needs arrays 'x' and 'y', found {sorted(data.files)}")
        x, y = np.asarray(data["x"], dtype=np.float32), np.asarray(data["y"])
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{path.name}: x {x.shape} and y {y.shape} are not one non-empty table of rows")
    return Split(x, y)


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
    """The model's outputs on `x`, computed in batches."""
    outputs = [
        session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x[i : i + batch])})[0]
        for i in range(0, len(x), batch)
    ]
    return np.concatenate(outputs).astype(np.float32)


def macro_f1(y: np.ndarray, predicted: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in `y` or `predicted`."""
    scores = []
    for label in np.union1d(y, predicted):
        tp = float(np.sum((predicted == label) & (y == label)))
        fp = float(np.sum((predicted == label) & (y != label)))
        fn = float(np.sum((predicted != label) & (y == label)))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def latencies_ms(session, x: np.ndarray, batch: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """p50 and p99 milliseconds per call at `batch` rows, after warm-up, for up to LATENCY_BUDGET_S."""
    rows = np.ascontiguousarray(np.resize(x, (batch, x.shape[1])).astype(np.float32))
    feed = {INPUT_NAME: rows}
    for _ in range(5):
        session.run([OUTPUT_NAME], feed)
    times: list[float] = []
    deadline = time.perf_counter() + LATENCY_BUDGET_S
    while len(times) < MAX_RUNS and (len(times) < MIN_RUNS or time.perf_counter() < deadline):
        start = time.perf_counter_ns()
        session.run([OUTPUT_NAME], feed)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


# VmHWM is the peak resident set of this process image; writing 5 to clear_refs resets it to the current
# RSS, so import-time peaks do not count (getrusage's ru_maxrss would also carry the parent's peak over exec)
_PEAK_PROBE = r"""
import sys
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
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status_kib("VmRSS")
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.log_severity_level = 3
session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
session.run(None, {session.get_inputs()[0].name: np.zeros((32, features), np.float32)})
print(max(status_kib("VmHWM") - before, 0) * 1024 + len(data))
"""


def peak_memory_bytes(path: Path, n_features: int) -> float:
    """Bytes a fresh process holds for this model: the file's bytes plus resident growth from session
    creation and one batch-32 run (the child imports numpy and onnxruntime before measuring)."""
    verify_self_contained_onnx(path.read_bytes())
    completed = subprocess.run(
        [sys.executable, "-c", _PEAK_PROBE, str(path), str(n_features)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if completed.returncode != 0:
        tail = completed.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"the memory probe failed: {tail[0]}")
    return float(json.loads(completed.stdout.strip().splitlines()[-1]))
