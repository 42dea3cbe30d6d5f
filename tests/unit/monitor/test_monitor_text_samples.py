"""A text model's samples (a BYTES first input) into text windows, its text split into a text reference, and
the drift view of one over the other: rows named, odd texts counted, a kind mismatch refused with the reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import orjson
import pytest
from monitor_core import sqlite_monitor
from monitor_texts import texts
from rich.console import Console

from gallery_cli.monitor_cmd import drift_view
from gallery_common.contracts.splits import write_split
from gallery_monitor.core import Monitor
from gallery_monitor.references import ReferenceCache, TrainingData, read_split
from gallery_monitor.samples import InvalidSample, SampleBook, SampleWindow, TextSample, TextWindow, parse_sample
from gallery_monitor.text_drift import TEXT_CHARS, TEXT_LENGTH, TOKENS, TextReference
from gallery_monitor.text_profile import TextLimits


def text_sample(rows: list[str], scores: list[list[float]] | None = None, *, shape: list[int] | None = None) -> bytes:
    doc = {
        "model": "news",
        "version": "1",
        "variant": "fp32",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": shape or [len(rows)], "data": rows}],
        "outputs": [] if scores is None else [
            {"name": "logits", "datatype": "FP32", "shape": [len(scores), len(scores[0])], "data": scores}
        ],
    }  # fmt: skip
    return orjson.dumps(doc)


def test_a_bytes_input_is_read_as_texts_with_their_classes() -> None:
    parsed = parse_sample(text_sample(["The Goal, late.", "", "oven  hot"], [[0.9, 0.1], [0.2, 0.8], [0.1, 0.9]]))
    assert isinstance(parsed, TextSample) and (parsed.model, parsed.version) == ("news", "1")
    assert [(m.tokens, m.chars) for m in parsed.texts] == [(3, 15), (0, 0), (2, 9)]
    np.testing.assert_array_equal(parsed.predictions, [0, 1, 1])
    column = parse_sample(text_sample(["a b", "c"], shape=[2, 1]))
    assert isinstance(column, TextSample) and [m.tokens for m in column.texts] == [2, 1]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (text_sample(["a", "b", "c", "d"], shape=[2, 2]), "a text input is one text per row, shape [N] or [N, 1]"),
        (
            orjson.dumps({"model": "news", "inputs": [{"datatype": "BYTES", "shape": [2], "data": ["a", 3]}]}),
            "not a sample with a numeric or text first input: ProtocolError",
        ),
        (
            orjson.dumps({"model": "news", "inputs": [{"datatype": "BYTES", "shape": [1], "data": [7]}]}),
            "not a sample with a numeric or text first input: ProtocolError",
        ),
    ],
)
def test_unusable_text_samples_are_refused_with_the_reason(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidSample, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_sample(raw)


def test_the_text_window_keeps_the_newest_texts_and_counts_the_odd_ones() -> None:
    book = SampleBook(capacity=5, text_limits=TextLimits(max_tokens=4))
    for t in range(7):  # texts with t + 1 tokens at times 0..6; the buffer keeps the last five
        assert book.ingest(text_sample([" ".join(["goal"] * (t + 1))], [[1.0, 0.0]]), now=float(t))
    window = book.window("news", "1")
    assert isinstance(window, TextWindow) and len(window) == 5
    samples, predictions = window.window(since=4.0)
    assert sorted(samples.tokens.tolist()) == [4, 4, 4]  # 5, 6 and 7 tokens, read up to the cap of 4
    assert samples.truncated == 3 and len(samples.hashes) == 12 and predictions.tolist() == [0, 0, 0]
    # an empty text, a text a lenient decoder marked as not UTF-8, a huge one: counted, none refused
    assert book.ingest(text_sample(["", "caf\ufffd ok", "x " * 2_000_000]), now=7.0)
    samples, predictions = window.window(since=7.0)
    assert samples.tokens.tolist() == [0, 2, 4] and samples.chars.tolist() == [0, 7, 4_000_000]
    assert (samples.undecodable, samples.truncated) == (1, 1) and len(predictions) == 0
    # a numeric sample of the same version is a new signature: it replaces the text window
    numeric = {"model": "news", "version": "1", "inputs": [{"datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    assert book.ingest(orjson.dumps(numeric), now=8.0)
    assert isinstance(book.window("news", "1"), SampleWindow)


def test_a_text_split_becomes_a_text_reference() -> None:
    buffer = io.BytesIO()
    write_split(buffer, np.array(texts(np.random.default_rng(0), 500), dtype=object), np.zeros(500, np.int64))
    x, y = read_split(buffer.getvalue(), "train_split of news:1")
    cache = ReferenceCache(
        lambda m, v: TrainingData(x, y), max_rows=300, retry_s=30, text_limits=TextLimits(top_tokens=10)
    )
    reference = cache.get("news", 1)
    assert isinstance(reference, TextReference) and reference.rows == 300  # subsampled to max_rows
    assert len(reference.top_tokens) == 10 and "the" in reference.top_tokens
    assert reference.token_shares.sum() == pytest.approx(1.0) and reference.token_shares[-1] > 0


def monitor_of(tmp_path: Path, x: np.ndarray, now: float) -> Monitor:
    return sqlite_monitor(
        tmp_path / "monitor.db", lambda m, v: TrainingData(x), lambda: now, text_psi_threshold=0.3, text_warn_psi=0.15
    )


def test_the_drift_view_of_a_text_model_names_its_rows(tmp_path: Path) -> None:
    monitor = monitor_of(tmp_path, np.array(texts(np.random.default_rng(0), 2000)), now=100.0)
    shifted = texts(np.random.default_rng(1), 300, topic="cooking")
    for start in range(0, 300, 10):
        assert monitor.samples.ingest(text_sample(shifted[start : start + 10]), now=99.0)
    view = monitor.drift("news", None, None)
    assert view.version == 1 and view.samples == 300 and view.drifted
    assert view.features[0].name == TOKENS and {f.name for f in view.features} == {
        TEXT_LENGTH, TEXT_CHARS, TOKENS,
    }  # fmt: skip
    assert all(f.threshold == 0.3 for f in view.features)  # the monitor's text threshold, not the SLO's 0.2
    assert view.reasons[0].startswith("tokens: PSI ") and "> 0.3 " in view.reasons[0]
    assert view.text is not None and view.text.texts == 300 and view.text.warn_psi == 0.15
    shown = orjson.loads(view.model_dump_json())
    assert shown["text"]["unseen_token_share"] > 0.4 and shown["features"][0]["name"] == "tokens"


def test_texts_against_a_numeric_reference_are_not_compared(tmp_path: Path) -> None:
    monitor = monitor_of(tmp_path, np.zeros((100, 4), np.float32), now=100.0)
    assert monitor.samples.ingest(text_sample(["a goal"]), now=99.0)
    view = monitor.drift("news", 1, None)
    assert not view.drifted and view.features == []
    assert view.reasons == ["samples hold texts, the training reference numeric features: not compared"]


def test_gallery_monitor_in_the_terminal_names_the_text_rows(tmp_path: Path) -> None:
    monitor = monitor_of(tmp_path, np.array(texts(np.random.default_rng(0), 2000)), now=100.0)
    for start in range(0, 300, 10):
        monitor.samples.ingest(text_sample(texts(np.random.default_rng(start), 10, topic="cooking")), now=99.0)
    shown = orjson.loads(monitor.drift("news", None, None).model_dump_json())
    console = Console(width=120, record=True, color_system="truecolor")
    console.print(drift_view(shown, psi_limit=0.2))
    lines = console.export_text(clear=False).splitlines()
    # each row: the name, then PSI, KS and p-value
    named = [line.strip().rsplit(None, 3)[0] for line in lines if line.strip().startswith(("tokens", "text length"))]
    assert named[0] == "tokens" and set(named) == {"tokens", "text length (tokens)", "text length (characters)"}
    styled = console.export_text(styles=True)
    token_psi = f"{shown['features'][0]['psi']:.3f}"
    assert shown["features"][0]["name"] == "tokens" and f"\x1b[1;31m{token_psi}" in styled  # over: in red
    # a text row is judged against its own limit: 0.25 is under the text limit 0.3, though over the SLO's 0.2
    shown["features"] = [shown["features"][1] | {"psi": 0.25}]
    console.print(drift_view(shown, psi_limit=0.2))
    assert "0.250" in console.export_text(clear=False) and "\x1b[1;31m0.250" not in console.export_text(styles=True)
