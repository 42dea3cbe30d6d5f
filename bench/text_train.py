"""The text example job (examples/text-topics.yaml: WordNet topics, vectorizer + MLP) trained by the trainer's own
pipeline, then the exported model timed in ONNX Runtime on raw strings.

Printed: preparation and whole-job seconds, test accuracy (with and without the augmentation, over the split
seeds asked for), the ONNX file's size, and the model's latency p50 at batch 1 and 32 (one intra-op thread)
beside the vectorizer graph alone, so the share of the tokenizer in a request shows.

Run: .venv/bin/python bench/text_train.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import yaml

from gallery_common.contracts import read_split
from gallery_trainer.pipeline import run_job
from gallery_trainer.spec import parse_spec

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "text-topics.yaml"


def p50_ms(session: ort.InferenceSession, texts: np.ndarray, output: str, calls: int = 300) -> float:
    feed = {"text": texts}
    for _ in range(20):
        session.run([output], feed)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        session.run([output], feed)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def session(model: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="split seeds")
    args = parser.parse_args()
    base = yaml.safe_load(EXAMPLE.read_text())
    with tempfile.TemporaryDirectory(prefix="bench-text-") as tmp:
        last = None
        for seed in args.seeds:
            for augmented in (True, False):
                doc = yaml.safe_load(yaml.safe_dump(base))
                doc["preparation"]["split"]["seed"] = seed
                if not augmented:
                    doc["preparation"]["augmentation"].pop("text")
                workdir = Path(tmp) / f"seed{seed}-{'aug' if augmented else 'plain'}"
                started = time.perf_counter()
                outputs = run_job(parse_spec(doc), workdir)
                seconds = time.perf_counter() - started
                print(
                    f"split seed {seed}, augmentation {'on ' if augmented else 'off'}: "
                    f"test accuracy {outputs.metrics['test_accuracy']:.3f}, "
                    f"{int(outputs.metrics['epochs_run'])} epochs, "
                    f"{outputs.leakage['augmented_train_rows']} augmented rows, job {seconds:.1f} s"
                )
                last = outputs
        assert last is not None
        model = last.files["onnx"].read_bytes()
        vectorizer = onnx.load(str(last.files["onnx"].parent / "vectorizer.onnx")).SerializeToString()
        texts = read_split(last.files["test_split"]).x
        print(f"model.onnx {len(model) / 1e6:.1f} MB (vectorizer {len(vectorizer) / 1e6:.1f} MB)")
        whole, alone = session(model), session(vectorizer)
        for batch in (1, 32):
            rows = np.ascontiguousarray(texts[:batch])
            print(
                f"batch {batch:>2}: model p50 {p50_ms(whole, rows, 'logits'):.3f} ms, "
                f"vectorizer alone {p50_ms(alone, rows, 'text_features'):.3f} ms"
            )


if __name__ == "__main__":
    main()
