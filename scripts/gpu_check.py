"""The GPU path end to end (run by scripts/gpu_check.sh in a venv with CUDA torch and onnxruntime-gpu).

1. Train the digits MLP with the trainer's pipeline: one DeepSpeed rank on the collective backend asked for
   (`nccl` on a GPU).
2. Optimize: the FP32 export and its INT8 dynamic variant (the optimizer's own `int8_dynamic`).
3. Serve each variant with `python -m gallery_deployer.modelserver --execution-providers P` for every
   preference P asked for (default `cuda` and `tensorrt,cuda`), call it, check its answers against ONNX
   Runtime's CPU provider, and measure closed-loop req/s and p50/p99 over HTTP (bench/serve_load.py).

Printed: the training figures, then per variant and preference the provider the server actually used (from
its metadata), why an earlier one was passed over, the largest difference from the CPU's answers, and the
figures. `--backend gloo --providers cpu` runs the same path on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from serve_load import measure  # noqa: E402

from gallery_common.netutil import free_port  # noqa: E402

CELLS = [(1, 1), (1, 16), (32, 16)]  # (batch, concurrency)


def train(workdir: Path, backend: str, epochs: int) -> tuple[Path, np.ndarray, dict[str, float], float]:
    """The FP32 ONNX file, validation rows, the job's metrics and its wall seconds."""
    from gallery_trainer.pipeline import run_job
    from gallery_trainer.spec import parse_spec

    spec = parse_spec(
        {
            "name": "gpu-check-digits",
            "data": {"source": "builtin", "name": "digits"},
            "model": {"hidden": [256, 256]},
            "training": {"epochs": epochs, "batch_size": 32, "learning_rate": 1e-3},
            "engine": {"kind": "deepspeed", "ranks": 1, "backend": backend, "checkpoint_epochs": 0},
        }
    )
    started = time.perf_counter()
    outputs = run_job(spec, workdir)
    seconds = time.perf_counter() - started
    with np.load(outputs.files["validation_split"]) as split:
        rows = np.asarray(split["x"], np.float32)
    return outputs.files["onnx"], rows, outputs.metrics, seconds


def variants(fp32: Path, folder: Path) -> dict[str, Path]:
    from gallery_optimizer.quantize import int8_dynamic

    return {"fp32": fp32, "int8_dynamic": int8_dynamic(fp32, folder / "int8_dynamic.onnx", reduce_range=False)}


@contextmanager
def model_server(path: Path, home: Path, providers: str, log: Path) -> Iterator[str]:
    """A model server on `path` asked for `providers`; yields its base URL once ready."""
    port = free_port()
    data = path.read_bytes()
    command = [
        sys.executable, "-m", "gallery_deployer.modelserver", "--model", "digits", "--version", "1",
        "--artifact", path.as_uri(), "--sha256", hashlib.sha256(data).hexdigest(), "--port", str(port),
        "--no-nats", "--execution-providers", providers,
    ]  # fmt: skip
    env = {
        **os.environ,
        "GALLERY_HOME": str(home),
        "GALLERY_ARTIFACT_ROOT": path.parent.as_uri(),
        "GALLERY_API_TOKENS": "",
        "GALLERY_TENSORRT_ENGINE_CACHE": str(home / "trt-cache"),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600  # a TensorRT engine build takes a while the first time
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"model server ({providers}) exited {process.returncode}: {log.read_text()[-800:]}")
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"model server ({providers}) not ready after 600 s")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def body(rows: np.ndarray) -> bytes:
    tensor = {"name": "features", "datatype": "FP32", "shape": list(rows.shape), "data": rows.ravel().tolist()}
    return orjson.dumps({"inputs": [tensor]})


def answer(url: str, rows: np.ndarray) -> np.ndarray:
    response = httpx.post(f"{url}/v2/models/digits/infer", content=body(rows), timeout=30)
    response.raise_for_status()
    output = next(o for o in response.json()["outputs"] if o["name"] == "logits")
    return np.asarray(output["data"], np.float32).reshape(output["shape"])


def cpu_answer(path: Path, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["logits"], {"features": rows})[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="nccl", choices=["nccl", "gloo"], help="the trainer's collective backend")
    parser.add_argument("--providers", nargs="+", default=["cuda", "tensorrt,cuda"], help="preferences to serve with")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per load cell")
    args = parser.parse_args(argv)
    print(f"ONNX Runtime {ort.__version__}: {', '.join(ort.get_available_providers())}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32, rows, metrics, seconds = train(work / "job", args.backend, args.epochs)
        print(
            f"trained ({args.backend}, 1 rank): {seconds:.1f} s wall, "
            f"{metrics.get('samples_per_sec', float('nan')):,.0f} samples/s, "
            f"test accuracy {metrics.get('test_accuracy', float('nan')):.3f}"
        )
        header = "".join(f" {f'b{b} c{c} req/s·p50·p99 ms':>26}" for b, c in CELLS)
        print(f"\n{'variant':<13} {'asked':<14} {'served on':<27} {'max |Δ|':>8}{header}")
        fallbacks: list[str] = []
        for name, path in variants(fp32, work).items():
            checked = rows[:32]  # one request of the model server's largest batch
            expected = cpu_answer(path, checked)
            bodies = {batch: work / f"body-{batch}.json" for batch, _ in CELLS}
            for batch, file in bodies.items():
                file.write_bytes(body(rows[:batch]))
            for providers in args.providers:
                log = work / f"{name}-{providers.replace(',', '-')}.log"
                with model_server(path, work / "home", providers, log) as url:
                    parameters = httpx.get(f"{url}/v2/models/digits", timeout=10).json()["parameters"]
                    difference = float(np.max(np.abs(answer(url, checked) - expected)))
                    cells = [measure(f"{url}/v2/models/digits/infer", bodies[b], c, args.seconds) for b, c in CELLS]
                texts = [f"{c['req_s']:,.0f}·{c['p50_ms']:.2f}·{c['p99_ms']:.1f}" for c in cells]
                figures = "".join(f" {text:>26}" for text in texts)
                used = parameters["execution_provider"]
                print(f"{name:<13} {providers:<14} {used:<27} {difference:>8.1e}{figures}")
                if parameters.get("provider_fallback"):
                    fallbacks.append(f"{name} asked {providers}: {parameters['provider_fallback']}")
        for line in fallbacks:
            print(f"fallback: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
