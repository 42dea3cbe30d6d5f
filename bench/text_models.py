"""A text model through the gate, the optimizer and the model server (issue 22, part 2): the example text job
(examples/text-topics.yaml: WordNet topics, vectorizer + MLP) trained by the trainer's pipeline, then

- the gate's evaluation (accuracy, latency p50/p99 at batch 1) and its word-occlusion importance (seconds, top
  words), both in the gate's sandbox;
- the optimizer's pipeline with the default policy: every variant's accuracy, size and latency at batch 1
  and 32 on the test texts;
- the model server serving it: closed-loop REST load of raw texts (BYTES) at batch 1 and 32, concurrency 8.

Run: .venv/bin/python bench/text_models.py [--workdir DIR] [--seconds 5]
(--workdir reuses a finished training run there instead of training again.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import yaml

from gallery_common.contracts import read_split
from gallery_common.netutil import free_port

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from serve import running  # noqa: E402
from serve_load import measure  # noqa: E402

EXAMPLE = HERE.parent / "examples" / "text-topics.yaml"


def train(workdir: Path) -> None:
    from gallery_trainer.pipeline import run_job
    from gallery_trainer.spec import parse_spec

    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["engine"] = {"kind": "ddp", "ranks": 1}
    started = time.perf_counter()
    run_job(parse_spec(doc), workdir)
    print(f"trained the example text job in {time.perf_counter() - started:.1f} s")


def gate(workdir: Path, spec: dict[str, object]) -> None:
    from gallery_registry.gate.evaluation import HeldOutSplit, OnnxModel, evaluate
    from gallery_registry.gate.explainer import ImportanceConfig
    from gallery_registry.gate.word_importance import word_importance

    model = OnnxModel((workdir / "model.onnx").read_bytes())
    split = HeldOutSplit.load(workdir / "test_split.npz")
    report = evaluate(model, split, "classification", spec["class_names"])  # type: ignore[arg-type]
    print(
        f"gate: accuracy {report['accuracy']:.4f} on {report['n_test']} texts, latency batch 1 "
        f"p50 {report['latency_p50_ms']:.3f} ms p99 {report['latency_p99_ms']:.3f} ms"
    )
    found = word_importance(model, split.x, ImportanceConfig())
    top = ", ".join(f"{g['name']} {g['importance']:.3f}" for g in found["groups"][:8])
    print(f"gate: word importance over {found['rows']} texts in {found['seconds']:.2f} s; top: {top}")


def optimizer(workdir: Path, spec: dict[str, object]) -> None:
    from gallery_optimizer.pipeline import OptimizeInputs, optimize
    from gallery_optimizer.policy import OptimizationPolicy

    inputs = OptimizeInputs(
        workdir / "model.onnx",
        workdir / "weights.safetensors",
        spec,
        workdir / "train_split.npz",
        workdir / "validation_split.npz",
        workdir / "test_split.npz",
        spec["class_names"],  # type: ignore[arg-type]
    )
    with tempfile.TemporaryDirectory(prefix="bench-text-optimize-") as tmp:
        started = time.perf_counter()
        report = optimize(inputs, OptimizationPolicy(), Path(tmp), model="wordnet-topics", version=1)
        print(f"optimizer: {time.perf_counter() - started:.1f} s, recommended {report.recommended}")
    print(f"{'variant':<18} {'accuracy':>8} {'size KiB':>9} {'b1 p50 ms':>10} {'b32 p50 ms':>11}")
    for row in report.variants:
        if not row.ok:
            print(f"{row.name:<18} failed: {row.error}")
            continue
        assert row.accuracy is not None and row.size_bytes is not None
        print(
            f"{row.name:<18} {row.accuracy:>8.4f} {row.size_bytes / 1024:>9.0f} {row.latency_b1_p50_ms:>10.3f} "
            f"{row.latency_b32_p50_ms:>11.3f}"
        )


def serving(workdir: Path, seconds: float) -> None:
    texts = read_split(workdir / "test_split.npz").x
    data = (workdir / "model.onnx").read_bytes()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-text-serve-") as tmp:
        work = Path(tmp)
        model = work / "artifacts" / "topics" / "model.onnx"
        model.parent.mkdir(parents=True)
        model.write_bytes(data)
        argv = [sys.executable, "-m", "gallery_deployer.modelserver", "--model", "topics", "--version", "1"]
        argv += ["--artifact", model.as_uri(), "--sha256", hashlib.sha256(data).hexdigest(), "--port", str(port)]
        argv += ["--no-nats"]
        env = {"GALLERY_HOME": str(work), "GALLERY_ARTIFACT_ROOT": model.parents[1].as_uri(), "GALLERY_API_TOKENS": ""}
        ready = f"http://127.0.0.1:{port}/v2/health/ready"
        with running("model server", argv, env, ready, work / "ms.log", work):
            for batch in (1, 32):
                rows = [str(t) for t in texts[:batch]]
                body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [batch], "data": rows}]}
                body_file = work / f"body-{batch}.json"
                body_file.write_bytes(orjson.dumps(body))
                cell = measure(f"http://127.0.0.1:{port}/v2/models/topics/infer", body_file, 8, seconds)
                print(
                    f"model server, raw texts over REST, batch {batch}, concurrency 8: {cell['req_s']:.0f} req/s, "
                    f"p50 {cell['p50_ms']:.2f} ms, p99 {cell['p99_ms']:.2f} ms"
                )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="a finished run of the example text job to reuse")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of load per serving cell")
    parser.add_argument("--skip-optimizer", action="store_true", help="leave out the optimizer (minutes)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-text-") as tmp:
        workdir = args.workdir or Path(tmp) / "work"
        if not (workdir / "spec.json").exists():
            train(workdir)
        spec = json.loads((workdir / "spec.json").read_text())
        accuracy = float(np.asarray(spec["metrics"]["test_accuracy"]))  # type: ignore[index]
        print(f"the trainer's test accuracy: {accuracy:.4f}")
        gate(workdir, spec)
        if not args.skip_optimizer:
            optimizer(workdir, spec)
        serving(workdir, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
