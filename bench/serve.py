"""Serving benchmark (issue 6): one fixed ONNX MLP served five ways, measured by closed-loop load.

    .venv/bin/python bench/serve.py [--quick] [--skip-competitors]

Rows: in-process ONNX Runtime (the limit), our model server directly, the same through the gateway,
KServe's `ModelServer` and BentoML (each in its own venv under bench/.venvs/), at concurrency 1, 8 and
64 and batch 1 and 32. Targets: at concurrency 64 our server gives at least 2x the req/s of KServe and
of BentoML with a lower p99; the gateway adds at most 1 ms p50 over the direct path.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import orjson
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_competitors import COMPETITORS, Competitor
from serve_load import measure, percentile

LAYERS = (64, 256, 256, 10)
SEED = 6
INFER_PATH = "/v2/models/mlp/infer"
Cell = dict[str, float]


def build_mlp(path: Path) -> None:
    """The fixed 64→256→256→10 ReLU MLP with seeded random weights, one self-contained file."""
    rng = np.random.default_rng(SEED)
    nodes, inits, current = [], [], "input"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(LAYERS)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = np.zeros(fan_out, dtype=np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(LAYERS) - 2
        gemm_out = "output" if last else f"g{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [gemm_out]))
        out = gemm_out
        if not last:
            out = f"h{i}"
            nodes.append(helper.make_node("Relu", [gemm_out], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", LAYERS[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", LAYERS[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def write_body(path: Path, batch: int) -> None:
    rng = np.random.default_rng(batch)
    data = rng.standard_normal((batch, LAYERS[0])).astype(np.float32)
    tensor = {"name": "input", "shape": [batch, LAYERS[0]], "datatype": "FP32", "data": data.ravel().tolist()}
    path.write_bytes(orjson.dumps({"inputs": [tensor]}))


def in_process(onnx_path: Path, batch: int, seconds: float) -> Cell:
    """The ceiling: `session.run` back to back, no HTTP, no JSON."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(batch).standard_normal((batch, LAYERS[0])).astype(np.float32)
    for _ in range(50):
        session.run(None, {"input": x})
    latencies: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        t = time.perf_counter()
        session.run(None, {"input": x})
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": 0,
        "req_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(name: str, argv: list[str], env: dict[str, str], ready_url: str, log: Path, cwd: Path) -> Iterator[None]:
    """Start a server process, wait until `ready_url` answers 200, stop it (and its children) after."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"{name} exited with {proc.returncode}: {' | '.join(tail)}")
            try:
                if httpx.get(ready_url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after 90 s")
            time.sleep(0.2)
        yield
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


def check_answer(url: str, body: Path, batch: int) -> None:
    """One request before measuring: a server that answers wrongly must not get a row of numbers."""
    answer = httpx.post(url, content=body.read_bytes(), headers={"Content-Type": "application/json"}, timeout=10)
    if answer.status_code != 200:
        raise RuntimeError(f"{url} answered {answer.status_code}: {answer.text[:200]}")
    outputs = answer.json()["outputs"][0]
    if len(outputs["data"]) != batch * LAYERS[-1]:
        raise RuntimeError(f"{url} answered {len(outputs['data'])} values, expected {batch * LAYERS[-1]}")


def sweep(url: str, bodies: dict[int, Path], grid: list[tuple[int, int]], seconds: float) -> dict[tuple, Cell]:
    cells: dict[tuple, Cell] = {}
    for batch in sorted({b for _, b in grid}):
        check_answer(url, bodies[batch], batch)
    for concurrency, batch in grid:
        measure(url, bodies[batch], concurrency, min(1.0, seconds))  # warm-up, discarded
        cells[(concurrency, batch)] = measure(url, bodies[batch], concurrency, seconds)
    return cells


def our_servers(work: Path, onnx_path: Path, bodies, grid, seconds) -> tuple[dict, dict]:
    """Our model server directly and through the gateway."""
    python = sys.executable
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    root = work / "artifacts"
    (root / "mlp").mkdir(parents=True)
    shutil.copy(onnx_path, root / "mlp" / "model.onnx")
    env = {"GALLERY_HOME": str(work / "home"), "GALLERY_ARTIFACT_ROOT": root.as_uri(), "GALLERY_API_TOKENS": ""}
    ms_port, gw_port = free_port(), free_port()
    ms_argv = [python, "-m", "gallery_deployer.modelserver", "--model", "mlp", "--version", "1"]
    ms_argv += ["--artifact", (root / "mlp" / "model.onnx").as_uri(), "--sha256", digest, "--port", str(ms_port)]
    direct_url = f"http://127.0.0.1:{ms_port}{INFER_PATH}"
    # The gateway without a bus: nats-server is not needed here and sampling (1 %) is off.
    gw_code = (
        "import uvicorn; from gallery_common.settings import load_settings;"
        "from gallery_deployer.gateway.app import create_app_for;"
        "from gallery_deployer.gateway.settings import GatewaySettings;"
        "s = load_settings(GatewaySettings);"
        "uvicorn.run(create_app_for(s, with_bus=False), host='127.0.0.1', port=s.port, loop='uvloop',"
        " http='httptools', log_config=None, access_log=False)"
    )
    gw_env = {**env, "GALLERY_PORT": str(gw_port), "GALLERY_SAMPLE_RATE": "0"}
    with running("model server", ms_argv, env, f"http://127.0.0.1:{ms_port}/v2/health/ready", work / "ms.log", work):
        print("  model server: direct", flush=True)
        direct = sweep(direct_url, bodies, grid, seconds)
        gw_ready = f"http://127.0.0.1:{gw_port}/v2/health/live"
        with running("gateway", [python, "-c", gw_code], gw_env, gw_ready, work / "gw.log", work):
            route = {"backends": [{"id": "ms1", "url": f"http://127.0.0.1:{ms_port}", "version": "1", "weight": 1}]}
            put = httpx.put(f"http://127.0.0.1:{gw_port}/admin/routes/mlp", json={**route, "policy": {}}, timeout=10)
            if put.status_code != 200:
                raise RuntimeError(f"gateway refused the route: {put.status_code} {put.text[:200]}")
            print("  model server: through the gateway", flush=True)
            gateway = sweep(f"http://127.0.0.1:{gw_port}{INFER_PATH}", bodies, grid, seconds)
    return direct, gateway


def competitor(comp: Competitor, work: Path, onnx_path: Path, bodies, grid, seconds) -> dict:
    """A competitor's cells; RuntimeError with the reason when it cannot be installed or started."""
    if not comp.installed:
        print(f"  {comp.name}: installing into {comp.venv} (first run only)", flush=True)
    comp.install()
    port = free_port()
    argv, env = comp.command(onnx_path, port, free_port(), work)
    ready = f"http://127.0.0.1:{port}" + ("/v2/health/ready" if comp.name == "kserve" else "/readyz")
    with running(comp.name, argv, env, ready, work / f"{comp.name}.log", work):
        print(f"  {comp.name}: measuring", flush=True)
        return sweep(f"http://127.0.0.1:{port}{comp.path}", bodies, grid, seconds)


def print_table(rows: dict[str, dict | str], grid: list[tuple[int, int]]) -> None:
    print(f"\n{'server':<22} {'conc':>5} {'batch':>6} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7}")
    for server, cells in rows.items():
        if isinstance(cells, str):
            print(f"{server:<22} not measured: {cells}")
            continue
        for key in grid:
            if key not in cells:
                continue
            c = cells[key]
            print(
                f"{server:<22} {key[0]:>5} {key[1]:>6} {c['req_s']:>10,.0f} {c['p50_ms']:>9.2f} "
                f"{c['p99_ms']:>9.2f} {int(c['errors']):>7}"
            )


def verdicts(rows: dict[str, dict | str], grid: list[tuple[int, int]]) -> list[str]:
    """PASS/MISS lines for the issue's targets; a target that could not be measured says so."""
    lines = []
    ours, gateway = rows.get("model server"), rows.get("gateway → model server")
    for name in ("kserve", "bentoml"):
        other = rows.get(name)
        if not isinstance(ours, dict) or not isinstance(other, dict):
            lines.append(f"SKIP  2x {name} req/s with lower p99 at concurrency 64: {name} not measured")
            continue
        for conc, batch in grid:
            if conc != 64:
                continue
            a, b = ours[(conc, batch)], other[(conc, batch)]
            ratio = a["req_s"] / b["req_s"] if b["req_s"] else float("inf")
            ok = ratio >= 2 and a["p99_ms"] < b["p99_ms"]
            lines.append(
                f"{'PASS' if ok else 'MISS'}  vs {name}, conc 64 batch {batch}: {ratio:.2f}x req/s "
                f"(target >= 2x), p99 {a['p99_ms']:.1f} vs {b['p99_ms']:.1f} ms (target lower)"
            )
    if isinstance(ours, dict) and isinstance(gateway, dict):
        for key in grid:
            added = gateway[key]["p50_ms"] - ours[key]["p50_ms"]
            lines.append(
                f"{'PASS' if added <= 1.0 else 'MISS'}  gateway adds {added:+.2f} ms p50 at conc {key[0]} "
                f"batch {key[1]} (target <= 1 ms)"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="concurrency 1 and 64 only, 2 s cells")
    parser.add_argument("--skip-competitors", action="store_true", help="leave out KServe and BentoML")
    parser.add_argument("--seconds", type=float, help="length of one cell (default 5, 2 with --quick)")
    args = parser.parse_args(argv)
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    concurrencies = (1, 64) if args.quick else (1, 8, 64)
    grid = [(c, b) for b in (1, 32) for c in concurrencies]
    generator = "wrk" if shutil.which("wrk") else "asyncio generator (bench/serve_load.py, own process)"
    print(f"serve benchmark: MLP {'-'.join(map(str, LAYERS))}, {seconds:g} s per cell, load: {generator}")

    rows: dict[str, dict | str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        onnx_path = work / "mlp.onnx"
        build_mlp(onnx_path)
        bodies = {b: work / f"body{b}.json" for b in (1, 32)}
        for batch, path in bodies.items():
            write_body(path, batch)
        rows["in-process ORT"] = {(1, b): in_process(onnx_path, b, min(seconds, 2.0)) for b in (1, 32)}
        try:
            rows["model server"], rows["gateway → model server"] = our_servers(work, onnx_path, bodies, grid, seconds)
        except RuntimeError as exc:
            rows["model server"] = str(exc)
        for comp in () if args.skip_competitors else COMPETITORS:
            try:
                rows[comp.name] = competitor(comp, work, onnx_path, bodies, grid, seconds)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                rows[comp.name] = str(exc)
        if args.skip_competitors:
            rows["kserve"] = rows["bentoml"] = "skipped (--skip-competitors)"
    print_table(rows, grid)
    print("(in-process ORT: one caller, no HTTP; its conc column is 1)\n")
    lines = verdicts(rows, grid)
    print("\n".join(lines))
    return 1 if any(line.startswith("MISS") for line in lines) else 0


if __name__ == "__main__":
    raise SystemExit(main())
