"""Monitor, text inputs: what a text model's drift check costs, in process.

1. Reference: `TextReference.from_texts` on N training texts (the monitor builds it once per version).
2. Ingest: `SampleBook.ingest` on gateway-shaped samples of one text each (a BYTES input, 2 logits), and on
   samples of one huge text (1 MB: read only up to GALLERY_TEXT_MAX_TOKENS tokens).
3. Evaluation: `evaluate_text_drift` of a full window (GALLERY_SAMPLE_BUFFER_ROWS texts).

Texts are drawn from a Zipf-like vocabulary of 5,000 words, about 20 words each.

    .venv/bin/python bench/monitor_text.py [--train 50000] [--samples 20000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import orjson

from gallery_monitor.drift import DriftRule
from gallery_monitor.samples import SampleBook, TextWindow
from gallery_monitor.text_drift import TextReference, evaluate_text_drift

VOCABULARY = [f"w{i}" for i in range(5000)]


def texts(rng: np.random.Generator, n: int) -> list[str]:
    p = 1.0 / np.arange(1, len(VOCABULARY) + 1)
    words = rng.choice(len(VOCABULARY), size=(n, 40), p=p / p.sum())
    lengths = np.maximum(1, rng.poisson(20, n))
    return [" ".join(VOCABULARY[w] for w in row[:k]) for row, k in zip(words, lengths, strict=True)]


def sample(text: str) -> bytes:
    doc = {
        "model": "news",
        "version": "1",
        "variant": "fp32",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [1, 2], "data": [0.3, 0.7]}],
    }
    return orjson.dumps(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--samples", type=int, default=20_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    training = np.array(texts(rng, args.train))
    start = time.perf_counter()
    reference = TextReference.from_texts(training)
    print(f"reference of {args.train:,} texts: {time.perf_counter() - start:.2f} s")

    messages = [sample(t) for t in texts(rng, args.samples)]
    book = SampleBook(args.samples)
    start = time.perf_counter()
    for message in messages:
        book.ingest(message, 1.0)
    seconds = time.perf_counter() - start
    print(f"ingest, one text of ~20 words per sample: {args.samples / seconds:,.0f} samples/s")

    huge = [sample("w1 " * 350_000) for _ in range(200)]
    start = time.perf_counter()
    for message in huge:
        book.ingest(message, 1.0)
    seconds = time.perf_counter() - start
    print(f"ingest, one 1 MB text per sample (JSON decode included): {len(huge) / seconds:,.0f} samples/s")

    window = book.window("news", "1")
    assert isinstance(window, TextWindow)
    start = time.perf_counter()
    seen, predictions = window.window(0.0)
    report = evaluate_text_drift(reference, seen, predictions, DriftRule())
    seconds = time.perf_counter() - start
    print(f"evaluation of a window of {report.samples:,} texts: {seconds * 1000:.0f} ms (drifted: {report.drifted})")


if __name__ == "__main__":
    main()
