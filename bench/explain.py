"""Explanations (issue 17): what one costs, and what explaining does to the inference path beside it.

    .venv/bin/python bench/explain.py [--seconds 8] [--requests 20] [--strict]

Trains a small digits MLP (64 -> 64 -> 10, scikit-learn's digits, torch, a few seconds), exports it to
ONNX, builds its explainer artifact from the training split, and starts the model server on it (as the
deployer does: `python -m gallery_deployer.modelserver`, artifacts in a local folder). Then:

1. explain latency, one request at a time, for SHAP and LIME at nsamples 100 and 500 (the first request
   of each method also starts the explain worker process; it is left out of the figures);
2. the p99 of a closed-loop infer load (8 connections, batch 1) alone, and again while a client keeps
   explanations (SHAP, nsamples 500) running back to back. Target: infer p99 with explanations within
   20 % of its value without (the explanations run in their own worker process, on idle CPU only).
   Both clients run in processes of their own; the explaining one on idle CPU too
   (bench/explain_client.py).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import free_port, running
from serve_load import measure, percentile

from gallery_common.explain.layout import InputLayout
from gallery_common.explain.profile import build_profile, encode_profile
from gallery_common.nn.onnx_export import export_onnx

MODEL = "digits"
P99_TARGET = 1.20
CONCURRENCY = 8


def train_digits(path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """The MLP, exported to `path`; returns the training and test features and the test accuracy."""
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x.astype(np.float32), y, test_size=0.2, random_state=17)
    torch.manual_seed(17)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    features, labels = torch.from_numpy(x_train / 16), torch.from_numpy(y_train)
    for _ in range(300):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(features), labels).backward()
        optimiser.step()
    scaled = nn.Sequential(Scale(1 / 16), model).eval()  # raw 0..16 pixels in, as the trainer's models take them
    export_onnx(scaled, 64, path)
    with torch.no_grad():
        accuracy = float((scaled(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    return x_train, x_test, accuracy


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def body(row: np.ndarray, parameters: dict | None = None) -> bytes:
    tensor = {"name": "features", "shape": [1, 64], "datatype": "FP32", "data": [float(v) for v in row]}
    return orjson.dumps({"inputs": [tensor], **({"parameters": parameters} if parameters else {})})


def explain_latency(client: httpx.Client, rows: np.ndarray, method: str, nsamples: int, n: int) -> list[float]:
    """Seconds per explain request, one at a time with pauses between, over `n` different rows."""
    seconds = []
    for i in range(n):
        started = time.perf_counter()
        answer = client.post(
            f"/v2/models/{MODEL}/explain",
            content=body(rows[i % len(rows)], {"method": method, "nsamples": nsamples, "seed": i}),
        )
        seconds.append(time.perf_counter() - started)
        if answer.status_code != 200:
            raise RuntimeError(f"explain answered {answer.status_code}: {answer.text[:300]}")
        time.sleep(seconds[-1] * 4)  # past the worker's rest (GALLERY_EXPLAIN_CPU_SHARE): an idle server's latency
    return sorted(seconds)


def explaining_beside(url: str, rows: np.ndarray, seconds: float, work: Path) -> subprocess.Popen[str]:
    """bench/explain_client.py explaining back to back (SHAP, nsamples 500) for `seconds`, once it is ready."""
    np.save(work / "rows.npy", rows)
    client = Path(__file__).with_name("explain_client.py")
    argv = [sys.executable, str(client), url, MODEL, str(work / "rows.npy"), str(seconds), "500"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError("the explaining client did not start")
    return process


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per infer load cell")
    parser.add_argument("--requests", type=int, default=20, help="explain requests per latency cell")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the p99 target is missed")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-explain-") as tmp:
        work = Path(tmp)
        root = work / "artifacts" / MODEL
        root.mkdir(parents=True)
        onnx_path = root / "model.onnx"
        x_train, x_test, accuracy = train_digits(onnx_path)
        layout = InputLayout.of(64, [-1, 64], {"data": {"source": "builtin", "name": "digits"}})
        split_sha = hashlib.sha256(x_train.tobytes()).hexdigest()
        profile = build_profile(
            x_train, layout, task="classification", class_names=[str(i) for i in range(10)], source_sha256=split_sha
        )
        (root / "explainer.npz").write_bytes(encode_profile(profile))
        port = free_port()
        env = {
            "GALLERY_HOME": str(work / "home"),
            "GALLERY_ARTIFACT_ROOT": (work / "artifacts").as_uri(),
            "GALLERY_API_TOKENS": "",
            "GALLERY_LOG_LEVEL": "WARNING",
            "GALLERY_SERVE_NATS": "false",
            "GALLERY_EXPLAINER_URI": (root / "explainer.npz").as_uri(),
            "GALLERY_EXPLAINER_SHA256": hashlib.sha256((root / "explainer.npz").read_bytes()).hexdigest(),
        }
        argv = [sys.executable, "-m", "gallery_deployer.modelserver", "--model", MODEL, "--version", "1"]
        argv += ["--artifact", onnx_path.as_uri(), "--sha256", hashlib.sha256(onnx_path.read_bytes()).hexdigest()]
        argv += ["--port", str(port)]
        url = f"http://127.0.0.1:{port}"
        infer_body = work / "infer.json"
        infer_body.write_bytes(body(x_test[0]))
        print(
            f"digits MLP 64-64-10, test accuracy {accuracy:.3f}; explainer: {len(profile.background)} k-means "
            f"background rows, {layout.groups().count} patches of 2x2 pixels",
            flush=True,
        )
        with running("model server", argv, env, f"{url}/v2/health/ready", work / "ms.log", work):
            latencies: dict[tuple[str, int], list[float]] = {}
            with httpx.Client(base_url=url, timeout=120) as client:
                for method in ("shap", "lime"):
                    explain_latency(client, x_test, method, 100, 1)  # starts the worker; not counted
                    for nsamples in (100, 500):
                        latencies[(method, nsamples)] = explain_latency(client, x_test, method, nsamples, args.requests)
            infer_url = f"{url}/v2/models/{MODEL}/infer"
            measure(infer_url, infer_body, CONCURRENCY, 1.0)  # warm-up, discarded
            alone = measure(infer_url, infer_body, CONCURRENCY, args.seconds)
            explaining = explaining_beside(url, x_test[:50], args.seconds + 2.0, work)
            time.sleep(1.0)  # explanations are under way
            beside = measure(infer_url, infer_body, CONCURRENCY, args.seconds)
            out, _ = explaining.communicate(timeout=120)
            if explaining.returncode != 0:
                raise RuntimeError("the explaining client failed")
            done = [int(out.split()[-1])]

    print()
    print(f"{'explain':<8}{'nsamples':>9}{'n':>5}{'p50 ms':>9}{'p99 ms':>9}")
    for (method, nsamples), seconds in latencies.items():
        print(
            f"{method:<8}{nsamples:>9}{len(seconds):>5}{percentile(seconds, 0.5) * 1000:>9.1f}"
            f"{percentile(seconds, 0.99) * 1000:>9.1f}"
        )
    print()
    print(f"infer load: {CONCURRENCY} connections, batch 1, {args.seconds:g} s per cell")
    print(f"{'':<28}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    print(f"{'alone':<28}{alone['req_s']:>9.0f}{alone['p50_ms']:>9.2f}{alone['p99_ms']:>9.2f}")
    label = f"beside {done[0]} explanations"
    print(f"{label:<28}{beside['req_s']:>9.0f}{beside['p50_ms']:>9.2f}{beside['p99_ms']:>9.2f}")
    ratio = beside["p99_ms"] / alone["p99_ms"]
    ok = ratio <= P99_TARGET
    print(
        f"{'PASS' if ok else 'MISS'}  infer p99 beside explanations is {ratio:.2f}x its value alone "
        f"(target <= {P99_TARGET:.2f}x)"
    )
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
