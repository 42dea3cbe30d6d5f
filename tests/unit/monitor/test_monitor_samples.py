"""Sample messages as the gateway publishes them, into ring buffers cut into windows by arrival time."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from gallery_monitor.samples import NO_PREDICTION, InvalidSample, SampleBook, SampleWindow, parse_sample


def sample(
    rows: list[list[float]], scores: list[list[float]] | None, *, flat: bool = True, version: str = "3"
) -> bytes:
    data = [v for row in rows for v in row] if flat else rows
    doc = {
        "model": "iris",
        "version": version,
        "variant": "fp32",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [len(rows), len(rows[0])], "data": data}],
        "outputs": (
            [{"name": "logits", "datatype": "FP32", "shape": [len(scores), len(scores[0])], "data": scores}]
            if scores is not None
            else []
        ),
        "latency_ms": 1.2,
        "time": 1_700_000_000.0,
    }
    return orjson.dumps(doc)


def test_parses_flat_and_nested_tensors_and_takes_the_argmax_as_the_class() -> None:
    flat = parse_sample(sample([[1, 2], [3, 4]], [[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]]))
    nested = parse_sample(sample([[1, 2], [3, 4]], [[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]], flat=False))
    for parsed in (flat, nested):
        assert (parsed.model, parsed.version, parsed.variant) == ("iris", "3", "fp32")
        np.testing.assert_array_equal(parsed.rows, [[1, 2], [3, 4]])
        np.testing.assert_array_equal(parsed.predictions, [1, 0])


def test_a_sample_without_class_scores_has_rows_but_no_predictions() -> None:
    parsed = parse_sample(sample([[1, 2]], None))
    np.testing.assert_array_equal(parsed.predictions, [NO_PREDICTION])
    single_score = parse_sample(sample([[1, 2]], [[0.7]]))  # a regression output is not a class
    np.testing.assert_array_equal(single_score.predictions, [NO_PREDICTION])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not a sample with a numeric or text first input"),
        (orjson.dumps({"model": "iris", "inputs": []}), "not a sample with a numeric or text first input"),
        (
            orjson.dumps({"model": "iris", "inputs": [{"shape": [2, 2], "data": [1, 2, 3]}]}),
            "tensor has 3 values; shape [2, 2] needs 4",
        ),
        (
            orjson.dumps({"model": "iris", "inputs": [{"shape": [1, 2], "data": ["a", "b"]}]}),
            "not a sample with a numeric or text first input",
        ),
        (orjson.dumps({"model": "", "inputs": [{"shape": [1], "data": [1]}]}), "the sample names no model"),
    ],
)
def test_unusable_samples_are_refused_with_the_reason(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidSample, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_sample(raw)


def test_the_ring_buffer_keeps_the_newest_rows_and_cuts_windows_by_time() -> None:
    window = SampleWindow(capacity=5, features=2)
    for t in range(7):  # rows 0..6 at times 0..6; the buffer keeps rows 2..6
        window.append(np.array([[t, t]], np.float32), np.array([t % 3], np.int32), now=float(t))
    assert len(window) == 5
    rows, predictions = window.window(since=4.0)
    np.testing.assert_array_equal(sorted(rows[:, 0]), [4, 5, 6])
    np.testing.assert_array_equal(sorted(predictions), [0, 1, 2])
    rows, _ = window.window(since=0.0)
    np.testing.assert_array_equal(sorted(rows[:, 0]), [2, 3, 4, 5, 6])
    # a batch that wraps around the end of the buffer
    window.append(np.array([[7, 7], [8, 8], [9, 9]], np.float32), np.array([NO_PREDICTION] * 3, np.int32), now=9.0)
    rows, predictions = window.window(since=9.0)
    np.testing.assert_array_equal(sorted(rows[:, 0]), [7, 8, 9])
    assert len(predictions) == 0  # rows without a class give none
    # a batch larger than the buffer keeps its last rows
    window.append(np.arange(20, dtype=np.float32).reshape(10, 2), np.zeros(10, np.int32), now=10.0)
    rows, _ = window.window(since=0.0)
    np.testing.assert_array_equal(sorted(rows[:, 0]), [10, 12, 14, 16, 18])


def test_the_book_keeps_a_window_per_version_and_knows_the_latest() -> None:
    book = SampleBook(capacity=100)
    assert book.ingest(sample([[1, 2]], [[0.0, 1.0]], version="3"), now=1.0)
    assert book.ingest(sample([[3, 4]], [[1.0, 0.0]], version="4"), now=2.0)
    assert not book.ingest(b"{}", now=3.0)
    assert sorted(book.keys()) == [("iris", "3"), ("iris", "4")]
    assert book.latest_version("iris") == "4" and book.knows("iris") and not book.knows("wine")
    window = book.window("iris", "3")
    assert window is not None and len(window) == 1
    # a new input width means a new signature: the version's old rows are dropped
    assert book.ingest(sample([[1, 2, 3]], None, version="3"), now=4.0)
    window = book.window("iris", "3")
    assert window is not None and window.features == 3 and len(window) == 1
    # versions nobody samples any more are forgotten
    book.forget_before(3.0)
    assert book.keys() == [("iris", "3")] and book.latest_version("iris") == "3"
    book.forget_before(100.0)
    assert book.keys() == [] and not book.knows("iris")
