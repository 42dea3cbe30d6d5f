"""Sampled requests from the gateway, kept per model version in numpy ring buffers.

Ingest is the hot path (thousands of samples a second): parse the JSON once, decode the first input
tensor and the first output with the OIP codec (`gallery_common.contracts.oip`), copy the rows and
the top classes into preallocated arrays, nothing else. Windows are cut out (copied) only when drift
is evaluated.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import orjson

from gallery_common.contracts.oip import decode_tensor, top_classes
from gallery_common.telemetry import counter

NO_PREDICTION = -1
_FEATURES = np.dtype(np.float32)  # every sampled tensor is read as FP32, whatever its datatype

_SAMPLES = counter("monitor_samples_total", "Sampled requests received from the gateway, by outcome.", ("outcome",))
_ACCEPTED = _SAMPLES.labels("accepted")
_REJECTED = _SAMPLES.labels("rejected")


class InvalidSample(ValueError):
    """A sample the monitor cannot use; the message says why."""


@dataclass(frozen=True)
class Sample:
    """One sampled request: its model version, input rows [k, F] and predicted classes [k] (-1: none)."""

    model: str
    version: str
    variant: str
    rows: np.ndarray
    predictions: np.ndarray


def parse_sample(raw: bytes) -> Sample:
    """Decode what the gateway publishes on `inference.sample.<model>`."""
    try:
        doc = orjson.loads(raw)
        model = doc["model"]
        rows = decode_tensor(doc["inputs"][0], _FEATURES)
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise InvalidSample(f"not a sample with a numeric first input: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, str) or not model:
        raise InvalidSample("the sample names no model")
    shape = list(rows.shape)
    if not shape or not all(shape):
        raise InvalidSample(f"the first input's shape {shape!r} is not a list of positive sizes")
    count = shape[0] if len(shape) > 1 else 1
    rows = rows.reshape(count, -1)
    return Sample(model, str(doc.get("version") or ""), str(doc.get("variant") or ""), rows, _predictions(doc, count))


def _predictions(doc: dict[str, object], count: int) -> np.ndarray:
    """The top class of the first output per row; -1 for every row when there is no usable class output."""
    outputs = doc.get("outputs")
    try:
        scores = decode_tensor(outputs[0], _FEATURES)  # type: ignore[index]
    except (KeyError, IndexError, TypeError, ValueError):
        return np.full(count, NO_PREDICTION, dtype=np.int32)
    if scores.size < 2 * count or scores.size % count:  # one value per row is a regression, not a class
        return np.full(count, NO_PREDICTION, dtype=np.int32)
    return top_classes(scores.reshape(count, -1)).astype(np.int32)


class SampleWindow:
    """A ring buffer of one version's most recent sampled rows, their predictions and arrival times."""

    def __init__(self, capacity: int, features: int) -> None:
        self.capacity = capacity
        self.features = features
        self._rows = np.empty((capacity, features), dtype=np.float32)
        self._predictions = np.empty(capacity, dtype=np.int32)
        self._times = np.empty(capacity, dtype=np.float64)
        self._next = 0
        self._size = 0
        self.last_time = float("-inf")
        self._lock = threading.Lock()  # ingest runs on the event loop, windows are read from worker threads

    def __len__(self) -> int:
        return self._size

    def append(self, rows: np.ndarray, predictions: np.ndarray, now: float) -> None:
        count = rows.shape[0]
        if count >= self.capacity:
            rows, predictions, count = rows[-self.capacity :], predictions[-self.capacity :], self.capacity
        with self._lock:
            start = self._next
            end = start + count
            if end <= self.capacity:
                self._rows[start:end] = rows
                self._predictions[start:end] = predictions
                self._times[start:end] = now
            else:
                first = self.capacity - start
                self._rows[start:] = rows[:first]
                self._rows[: count - first] = rows[first:]
                self._predictions[start:] = predictions[:first]
                self._predictions[: count - first] = predictions[first:]
                self._times[start:] = now
                self._times[: count - first] = now
            self._next = end % self.capacity
            self._size = min(self.capacity, self._size + count)
            self.last_time = max(self.last_time, now)

    def window(self, since: float) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the rows [n, F] that arrived at or after `since`, and their known predicted classes."""
        with self._lock:
            size = self._size
            keep = self._times[:size] >= since
            rows = self._rows[:size][keep]
            predictions = self._predictions[:size][keep]
        return rows, predictions[predictions != NO_PREDICTION]


class SampleBook:
    """Every model version's sample window, filled from sample messages."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._windows: dict[tuple[str, str], SampleWindow] = {}
        self._last_seen: dict[str, tuple[float, str]] = {}  # model -> (time, version) of its latest sample

    def ingest(self, raw: bytes, now: float) -> bool:
        """Add one sample message; False (and counted as rejected) when it cannot be used."""
        try:
            sample = parse_sample(raw)
        except InvalidSample:
            _REJECTED.inc()
            return False
        self.add(sample, now)
        _ACCEPTED.inc()
        return True

    def add(self, sample: Sample, now: float) -> None:
        key = (sample.model, sample.version)
        window = self._windows.get(key)
        features = sample.rows.shape[1]
        if window is None or window.features != features:
            # a new input width is a new model signature: the old rows cannot be compared with it
            window = self._windows[key] = SampleWindow(self.capacity, features)
        window.append(sample.rows, sample.predictions, now)
        self._last_seen[sample.model] = (now, sample.version)

    def window(self, model: str, version: str) -> SampleWindow | None:
        return self._windows.get((model, version))

    def forget_before(self, oldest: float) -> None:
        """Drop the windows of versions not sampled since `oldest` (retired versions keep no memory)."""
        for key in [k for k, w in self._windows.items() if w.last_time < oldest]:
            del self._windows[key]
        for model in [m for m, (seen, _) in self._last_seen.items() if seen < oldest]:
            del self._last_seen[model]

    def keys(self) -> list[tuple[str, str]]:
        """(model, version) of every window, in no particular order."""
        return list(self._windows)

    def latest_version(self, model: str) -> str | None:
        """The version of the model's most recent sample."""
        seen = self._last_seen.get(model)
        return seen[1] if seen else None

    def knows(self, model: str) -> bool:
        return model in self._last_seen
