"""Serving on ONNX Runtime's CPU provider against OpenVINO's (issue 22): the same model server and MLP.

    .venv/bin/python bench/serve_providers.py [--seconds S]

bench/serve.py's 64→256→256→10 MLP is served twice by `python -m gallery_deployer.modelserver`: out of
.venv with `--execution-providers cpu`, and out of .venv-openvino with `--execution-providers openvino`
(make install builds that venv). Each server's metadata must name the provider it was asked for, and
both must give the same answers (the largest difference is printed), before anything is measured.
Printed per provider: closed-loop req/s, p50 and p99 ms over HTTP at batch 1 and 32, concurrency 1 and 16
(wrk when installed, else bench/serve_load.py's generator; both servers run side by side and take turns,
each cell's best round is printed) with the server's CPU time per request (user + system, all its threads:
OpenVINO runs inferences on threads of its own beside the one intra-op thread), and ONNX Runtime's own time
per run at batch 1 and 32 in that venv with no HTTP (p50 µs of back-to-back session.run calls).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import LAYERS, build_mlp, free_port, running, write_body
from serve_load import measure

REPO = Path(__file__).resolve().parents[1]
PROVIDERS = {  # label: (interpreter, --execution-providers, the provider the metadata must name)
    "CPU": (Path(sys.executable), "cpu", "CPUExecutionProvider"),
    "OpenVINO": (REPO / ".venv-openvino" / "bin" / "python", "openvino", "OpenVINOExecutionProvider"),
}
GRID = [(1, 1), (32, 1), (1, 16), (32, 16)]  # (batch, concurrency)
IN_PROCESS = """
import json, sys, time
import numpy as np, onnxruntime as ort
path, provider, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(path, options, providers=[provider, "CPUExecutionProvider"])
assert session.get_providers()[0] == provider, session.get_providers()
x = np.random.default_rng(batch).standard_normal((batch, 64)).astype(np.float32)
for _ in range(200):
    session.run(None, {"input": x})
times = []
for _ in range(3000):
    t = time.perf_counter()
    session.run(None, {"input": x})
    times.append(time.perf_counter() - t)
times.sort()
print(json.dumps({"p50_us": times[len(times) // 2] * 1e6}))
"""


def in_process_us(python: Path, onnx_path: Path, provider: str, batch: int) -> float:
    """ONNX Runtime's p50 µs per run in `python`'s venv, no HTTP."""
    out = subprocess.run(
        [str(python), "-c", IN_PROCESS, str(onnx_path), provider, str(batch)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return float(orjson.loads(out.stdout.strip().splitlines()[-1])["p50_us"])


def outputs(url: str, body: Path) -> np.ndarray:
    response = httpx.post(f"{url}/v2/models/mlp/infer", content=body.read_bytes(), timeout=10)
    response.raise_for_status()
    return np.asarray(response.json()["outputs"][0]["data"], np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per load cell")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the grid; each cell's best is printed")
    args = parser.parse_args(argv)
    missing = [str(python) for python, _, _ in PROVIDERS.values() if not python.exists()]
    if missing:
        print(f"missing {', '.join(missing)}: `make install` builds .venv-openvino", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        onnx_path = work / "artifacts" / "mlp.onnx"
        onnx_path.parent.mkdir()
        build_mlp(onnx_path)
        sha256 = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
        bodies = {batch: work / f"b{batch}.json" for batch in {b for b, _ in GRID}}
        for batch, path in bodies.items():
            write_body(path, batch)
        results: dict[str, dict[tuple[int, int], dict[str, float]]] = {}
        answers: dict[str, np.ndarray] = {}
        per_run = {
            label: {batch: in_process_us(python, onnx_path, provider, batch) for batch in bodies}
            for label, (python, _, provider) in PROVIDERS.items()
        }
        env = {"GALLERY_HOME": str(work), "GALLERY_API_TOKENS": "", "GALLERY_LOG_LEVEL": "WARNING"}
        with ExitStack() as servers:
            urls: dict[str, str] = {}
            processes: dict[str, psutil.Process] = {}
            for label, (python, flag, provider) in PROVIDERS.items():
                port = free_port()
                argv_ = [
                    str(python), "-m", "gallery_deployer.modelserver", "--model", "mlp", "--version", "1",
                    "--artifact", onnx_path.as_uri(), "--sha256", sha256, "--port", str(port),
                    "--intra-op-threads", "1", "--no-nats", "--execution-providers", flag,
                ]  # fmt: skip
                url = urls[label] = f"http://127.0.0.1:{port}"
                ready = f"{url}/v2/health/ready"
                server = servers.enter_context(running(label, argv_, env, ready, work / f"{label}.log", REPO))
                processes[label] = psutil.Process(server.pid)
                serving = httpx.get(f"{url}/v2/models/mlp", timeout=10).json()["parameters"]["execution_provider"]
                if serving != provider:
                    print(f"{label}: the server runs on {serving}, not {provider}", file=sys.stderr)
                    return 1
                answers[label] = outputs(url, bodies[32])
            # both servers up side by side, each cell measured on one then the other, round after round:
            # a busy moment of this shared machine then lands on both, not on one provider's figures
            rounds: dict[str, dict[tuple[int, int], list[dict[str, float]]]] = {label: {} for label in PROVIDERS}
            for _ in range(args.rounds):
                for batch, conc in GRID:
                    for label, url in urls.items():
                        before = sum(processes[label].cpu_times()[:2])
                        cell = measure(f"{url}/v2/models/mlp/infer", bodies[batch], conc, args.seconds)
                        spent = sum(processes[label].cpu_times()[:2]) - before
                        cell["cpu_us"] = spent / max(cell["requests"], 1) * 1e6
                        rounds[label].setdefault((batch, conc), []).append(cell)
        for label, cells in rounds.items():
            results[label] = {key: max(runs, key=lambda c: c["req_s"]) for key, runs in cells.items()}
    difference = float(np.max(np.abs(answers["CPU"] - answers["OpenVINO"])))
    print(f"MLP {'→'.join(map(str, LAYERS))}, one intra-op thread; largest answer difference {difference:.2e}")
    print(f"best of {args.rounds} rounds of {args.seconds:g} s per cell")
    heads = [f"b{batch} c{conc} req/s · p50 · p99 ms · CPU µs/req" for batch, conc in GRID]
    print(f"{'provider':<10} {'b1 µs/run':>10} {'b32 µs/run':>11}" + "".join(f" {h:>40}" for h in heads))
    for label in PROVIDERS:
        texts = [
            f"{c['req_s']:,.0f} · {c['p50_ms']:.2f} · {c['p99_ms']:.1f} · {c['cpu_us']:,.0f}"
            for c in results[label].values()
        ]
        runs = f"{per_run[label][1]:>10.0f} {per_run[label][32]:>11.0f}"
        print(f"{label:<10} {runs}" + "".join(f" {t:>40}" for t in texts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
