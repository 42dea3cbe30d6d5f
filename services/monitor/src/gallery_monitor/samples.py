"""Sampled requests from the gateway, kept per model version in numpy ring buffers.

Ingest is the hot path (thousands of samples a second): parse the JSON once, decode the first input
tensor and the first output with the OIP codec (`gallery_common.contracts.oip`), copy the rows and
the top classes into preallocated arrays, nothing else. Windows are cut out (copied) only when drift
is evaluated.

A text model's first input is a `BYTES` tensor [N] (one text per row). Its texts are not kept: each is
reduced on arrival to its lengths, flags and token hashes (`text_profile.measure`), so a text window of
`capacity` texts holds at most `capacity * max_tokens * 8` bytes of tokens (20,000 texts of 256 tokens:
41 MB) whatever clients send.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import orjson

from gallery_common.contracts.oip import decode_tensor, top_classes
from gallery_common.telemetry import counter

from .text_drift import TextSamples
from .text_profile import EMPTY_HASHES, TextLimits, TextMeasure, measure

NO_PREDICTION = -1
_FEATURES = np.dtype(np.float32)  # every sampled tensor is read as FP32, whatever its datatype

_SAMPLES = counter("monitor_samples_total", "Sampled requests received from the gateway, by outcome.", ("outcome",))
_ACCEPTED = _SAMPLES.labels("accepted")
_REJECTED = _SAMPLES.labels("rejected")
_TEXTS = "BYTES"
_UNDECODABLE = 1
_TRUNCATED = 2


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


@dataclass(frozen=True)
class TextSample:
    """One sampled request of a text model: its texts, each reduced to what drift compares, and their
    predicted classes [k] (-1: none)."""

    model: str
    version: str
    variant: str
    texts: list[TextMeasure]
    predictions: np.ndarray


def parse_sample(raw: bytes, limits: TextLimits | None = None) -> Sample | TextSample:
    """Decode what the gateway publishes on `inference.sample.<model>`: numeric rows, or texts when the
    first input is a BYTES tensor (read within `limits`)."""
    try:
        doc = orjson.loads(raw)
        model = doc["model"]
        first = doc["inputs"][0]
        texts = isinstance(first, dict) and first.get("datatype") == _TEXTS
        rows = decode_tensor(first, None if texts else _FEATURES)
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise InvalidSample(f"not a sample with a numeric or text first input: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, str) or not model:
        raise InvalidSample("the sample names no model")
    shape = list(rows.shape)
    if not shape or not all(shape):
        raise InvalidSample(f"the first input's shape {shape!r} is not a list of positive sizes")
    version, variant = str(doc.get("version") or ""), str(doc.get("variant") or "")
    if texts:
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise InvalidSample(f"a text input is one text per row, shape [N] or [N, 1], got {shape!r}")
        measures = [measure(text, limits or TextLimits()) for text in rows.reshape(-1).tolist()]
        return TextSample(model, version, variant, measures, _predictions(doc, len(measures)))
    count = shape[0] if len(shape) > 1 else 1
    rows = rows.reshape(count, -1)
    return Sample(model, version, variant, rows, _predictions(doc, count))


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


class TextWindow:
    """A ring buffer of one text model version's most recent sampled texts (as `TextMeasure`s), their
    predictions and arrival times."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._tokens = np.zeros(capacity, dtype=np.int64)
        self._chars = np.zeros(capacity, dtype=np.int64)
        self._flags = np.zeros(capacity, dtype=np.uint8)
        self._hashes = np.empty(capacity, dtype=object)
        self._predictions = np.empty(capacity, dtype=np.int32)
        self._times = np.empty(capacity, dtype=np.float64)
        self._next = 0
        self._size = 0
        self.last_time = float("-inf")
        self._lock = threading.Lock()  # ingest runs on the event loop, windows are read from worker threads

    def __len__(self) -> int:
        return self._size

    def append(self, texts: list[TextMeasure], predictions: np.ndarray, now: float) -> None:
        if len(texts) > self.capacity:
            texts, predictions = texts[-self.capacity :], predictions[-self.capacity :]
        with self._lock:
            for text, prediction in zip(texts, predictions.tolist(), strict=True):
                at = self._next
                self._tokens[at] = text.tokens
                self._chars[at] = text.chars
                self._flags[at] = _UNDECODABLE * text.undecodable | _TRUNCATED * text.truncated
                self._hashes[at] = text.hashes
                self._predictions[at] = prediction
                self._times[at] = now
                self._next = (at + 1) % self.capacity
            self._size = min(self.capacity, self._size + len(texts))
            self.last_time = max(self.last_time, now)

    def window(self, since: float) -> tuple[TextSamples, np.ndarray]:
        """The texts that arrived at or after `since`, and their known predicted classes."""
        with self._lock:
            size = self._size
            keep = self._times[:size] >= since
            tokens = self._tokens[:size][keep]
            chars = self._chars[:size][keep]
            flags = self._flags[:size][keep]
            hashes = list(self._hashes[:size][keep])
            predictions = self._predictions[:size][keep]
        samples = TextSamples(
            tokens,
            chars,
            np.concatenate(hashes) if hashes else EMPTY_HASHES,
            undecodable=int(np.count_nonzero(flags & _UNDECODABLE)),
            truncated=int(np.count_nonzero(flags & _TRUNCATED)),
        )
        return samples, predictions[predictions != NO_PREDICTION]


class SampleBook:
    """Every model version's sample window, filled from sample messages."""

    def __init__(self, capacity: int, text_limits: TextLimits | None = None) -> None:
        self.capacity = capacity
        self.text_limits = text_limits or TextLimits()
        self._windows: dict[tuple[str, str], SampleWindow | TextWindow] = {}
        self._last_seen: dict[str, tuple[float, str]] = {}  # model -> (time, version) of its latest sample

    def ingest(self, raw: bytes, now: float) -> bool:
        """Add one sample message; False (and counted as rejected) when it cannot be used."""
        try:
            sample = parse_sample(raw, self.text_limits)
        except InvalidSample:
            _REJECTED.inc()
            return False
        self.add(sample, now)
        _ACCEPTED.inc()
        return True

    def add(self, sample: Sample | TextSample, now: float) -> None:
        key = (sample.model, sample.version)
        window = self._windows.get(key)
        if isinstance(sample, TextSample):
            if not isinstance(window, TextWindow):
                window = self._windows[key] = TextWindow(self.capacity)
            window.append(sample.texts, sample.predictions, now)
        else:
            features = sample.rows.shape[1]
            if not isinstance(window, SampleWindow) or window.features != features:
                # a new input width is a new model signature: the old rows cannot be compared with it
                window = self._windows[key] = SampleWindow(self.capacity, features)
            window.append(sample.rows, sample.predictions, now)
        self._last_seen[sample.model] = (now, sample.version)

    def window(self, model: str, version: str) -> SampleWindow | TextWindow | None:
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
