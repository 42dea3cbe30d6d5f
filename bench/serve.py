"""Serving benchmark (issues 6 and 20): one fixed ONNX MLP served six ways, measured by closed-loop load.

    .venv/bin/python bench/serve.py [--quick] [--skip-competitors] [--rounds N]

Rows: in-process ONNX Runtime (the limit), the floor (a bare FastAPI + orjson endpoint over the same
ONNX Runtime session, bench/serve_floor.py), our model server directly, the same through the gateway and
through nginx (forwarding only: the reference for a compiled proxy, bench/serve_nginx.py),
KServe's `ModelServer` and BentoML (each in its own venv under bench/.venvs/), at concurrency 1, 8 and
64 and batch 1 and 32. The floor, the model server and the gateway run side by side: each cell is
measured on each of them in turn, for `--rounds` rounds, so the ratios compare like with like on a
loaded machine.

CPU per request: the CPU seconds (user + system) of the server's process tree over the cell, children
included, divided by the requests answered; the gateway row counts the gateway and the model server
behind it, and the gateway alone is printed beside it. Targets (issue 20): model server CPU per request
<= 1.25x the floor's at batch 1 and 32, concurrency 1; model server req/s at concurrency 64 >= 0.8x the
floor's; gateway CPU per request <= 0.5x the model server's; the gateway adds <= 0.5 ms p50 at
concurrency 1. And (issue 6): at concurrency 64 our server gives at least 2x the req/s of KServe and of
BentoML with a lower p99.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import orjson
import psutil
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_competitors import COMPETITORS, Competitor
from serve_grpc_load import check_answer as check_grpc_answer
from serve_grpc_load import measure as measure_grpc
from serve_load import measure, percentile
from serve_nginx import nginx_binary, nginx_command

from gallery_common.netutil import free_port

LAYERS = (64, 256, 256, 10)
SEED = 6
INFER_PATH = "/v2/models/mlp/infer"
Cell = dict[str, float]
Rows = dict[str, "dict[tuple[int, int], Cell] | str"]
FLOOR, MODEL_SERVER, GATEWAY = "floor (FastAPI + orjson)", "model server", "gateway → model server"
MODEL_SERVER_GRPC, GATEWAY_GRPC = "model server (gRPC)", "gateway → model server (gRPC)"
NGINX = "nginx → model server (ref.)"
HERE = Path(__file__).resolve().parent


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


@contextmanager
def running(
    name: str, argv: list[str], env: dict[str, str], ready_url: str, log: Path, cwd: Path
) -> Iterator[subprocess.Popen]:
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
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and all their live children."""
    total = 0.0
    for pid in pids:
        root = psutil.Process(pid)
        for proc in (root, *root.children(recursive=True)):
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
    return total


@dataclass
class Target:
    """A server measured by the benchmark: where to send load and which processes pay for it.

    `cpu_pids` are the process trees whose CPU counts for this row; `parts` names sub-trees printed
    beside it (the gateway alone). `load` measures one cell (an HTTP closed loop by default; another
    protocol brings its own with the same signature and returns the same Cell keys).
    """

    name: str
    url: str
    cpu_pids: list[int]
    parts: dict[str, list[int]] | None = None
    load: Callable[[str, Path, int, float], Cell] = measure
    check: Callable[[str, Path, int], None] | None = None  # one answer checked first; None: `check_answer`


def check_answer(url: str, body: Path, batch: int) -> None:
    """One request before measuring: a server that answers wrongly must not get a row of numbers."""
    answer = httpx.post(url, content=body.read_bytes(), headers={"Content-Type": "application/json"}, timeout=10)
    if answer.status_code != 200:
        raise RuntimeError(f"{url} answered {answer.status_code}: {answer.text[:200]}")
    outputs = answer.json()["outputs"][0]
    if len(outputs["data"]) != batch * LAYERS[-1]:
        raise RuntimeError(f"{url} answered {len(outputs['data'])} values, expected {batch * LAYERS[-1]}")


def measure_cell(target: Target, body: Path, concurrency: int, seconds: float) -> Cell:
    """One cell on one target with its CPU per request (µs) and that of its parts."""
    pids = {"cpu_us": target.cpu_pids, **{f"cpu_us_{k}": v for k, v in (target.parts or {}).items()}}
    before = {key: cpu_seconds(p) for key, p in pids.items()}
    cell = target.load(target.url, body, concurrency, seconds)
    after = {key: cpu_seconds(p) for key, p in pids.items()}
    answered = max(1.0, cell["requests"])
    cell.update({key: (after[key] - before[key]) / answered * 1e6 for key in pids})
    return cell


def _merge(cells: list[Cell]) -> Cell:
    """Medians of the rounds, with the CPU spread (lowest and highest round) kept beside."""
    merged = {key: statistics.median(c[key] for c in cells) for key in cells[0]}
    merged["errors"] = sum(c["errors"] for c in cells)
    merged["cpu_us_lo"] = min(c["cpu_us"] for c in cells)
    merged["cpu_us_hi"] = max(c["cpu_us"] for c in cells)
    return merged


def side_by_side(
    targets: list[Target], bodies: dict[int, Path], grid: list[tuple[int, int]], seconds: float, rounds: int
) -> dict[str, dict[tuple[int, int], Cell]]:
    """Every cell measured on every target in turn (the order rotated each round), `rounds` times.

    Each row's `cpu_ratio` is the median over rounds of its CPU per request divided by the first
    target's in the same round (`cpu_ratio_lo`/`_hi` the spread): the floor, when it leads the list.
    """
    for target in targets:
        for batch in sorted({b for _, b in grid}):
            (target.check or check_answer)(target.url, bodies[batch], batch)
    rows: dict[str, dict[tuple[int, int], Cell]] = {t.name: {} for t in targets}
    for concurrency, batch in grid:
        print(f"  conc {concurrency} batch {batch}", flush=True)
        for target in targets:
            target.load(target.url, bodies[batch], concurrency, min(1.0, seconds))  # warm-up, discarded
        runs: dict[str, list[Cell]] = {t.name: [] for t in targets}
        for r in range(rounds):
            for target in targets[r % len(targets) :] + targets[: r % len(targets)]:
                runs[target.name].append(measure_cell(target, bodies[batch], concurrency, seconds))
        reference = runs[targets[0].name]
        for target in targets:
            cell = _merge(runs[target.name])
            ratios = [c["cpu_us"] / ref["cpu_us"] for c, ref in zip(runs[target.name], reference, strict=True)]
            cell.update(cpu_ratio=statistics.median(ratios), cpu_ratio_lo=min(ratios), cpu_ratio_hi=max(ratios))
            rows[target.name][(concurrency, batch)] = cell
    return rows


def floor_session_flags() -> list[str]:
    """The floor's session built with our model server's default thread settings."""
    from gallery_deployer.modelserver.settings import ModelServerSettings

    fields = ModelServerSettings.model_fields
    flags = ["--intra-op-threads", str(fields["intra_op_threads"].default)]
    return [*flags, "--spinning"] if fields["intra_op_spinning"].default else flags


def our_servers(
    work: Path, onnx_path: Path, bodies: dict[int, Path], grid: list[tuple[int, int]], seconds: float, rounds: int
) -> Rows:
    """The floor, our model server directly and through the gateway (and nginx in front of it, the
    reference for a compiled proxy, where there is an nginx), measured side by side."""
    python = sys.executable
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    root = work / "artifacts"
    (root / "mlp").mkdir(parents=True)
    shutil.copy(onnx_path, root / "mlp" / "model.onnx")
    env = {"GALLERY_HOME": str(work / "home"), "GALLERY_ARTIFACT_ROOT": root.as_uri(), "GALLERY_API_TOKENS": ""}
    floor_port, ms_port, gw_port, nginx_port = free_port(), free_port(), free_port(), free_port()
    ms_grpc, gw_grpc = free_port(), free_port()
    floor_argv = [python, str(HERE / "serve_floor.py"), str(onnx_path), str(floor_port), *floor_session_flags()]
    ms_argv = [python, "-m", "gallery_deployer.modelserver", "--model", "mlp", "--version", "1"]
    ms_argv += ["--artifact", (root / "mlp" / "model.onnx").as_uri(), "--sha256", digest, "--port", str(ms_port)]
    ms_argv += ["--grpc-port", str(ms_grpc)]
    # The gateway without a bus: nats-server is not needed here and sampling (1 %) is off.
    gw_code = (
        "import uvicorn; from gallery_common.settings import load_settings;"
        "from gallery_common.http_server import OneWriteHttpToolsProtocol;"
        "from gallery_deployer.gateway.app import create_app_for;"
        "from gallery_deployer.gateway.settings import GatewaySettings;"
        "s = load_settings(GatewaySettings);"
        "uvicorn.run(create_app_for(s, with_bus=False), host='127.0.0.1', port=s.port, loop='uvloop',"
        " http=OneWriteHttpToolsProtocol, log_config=None, access_log=False)"
    )
    gw_env = {**env, "GALLERY_PORT": str(gw_port), "GALLERY_GRPC_PORT": str(gw_grpc), "GALLERY_SAMPLE_RATE": "0"}
    floor_ready, ms_ready = (
        f"http://127.0.0.1:{floor_port}/v2/health/ready",
        f"http://127.0.0.1:{ms_port}/v2/health/ready",
    )
    gw_ready = f"http://127.0.0.1:{gw_port}/v2/health/live"
    nginx = nginx_binary()
    with (
        running("floor", floor_argv, {}, floor_ready, work / "floor.log", work) as floor,
        running("model server", ms_argv, env, ms_ready, work / "ms.log", work) as ms,
        running("gateway", [python, "-c", gw_code], gw_env, gw_ready, work / "gw.log", work) as gw,
        contextlib.ExitStack() as optional,
    ):
        backend = {"id": "ms1", "url": f"http://127.0.0.1:{ms_port}", "grpc": f"127.0.0.1:{ms_grpc}", "version": "1"}
        route = {"backends": [{**backend, "weight": 1}]}
        put = httpx.put(f"http://127.0.0.1:{gw_port}/admin/routes/mlp", json={**route, "policy": {}}, timeout=10)
        if put.status_code != 200:
            raise RuntimeError(f"gateway refused the route: {put.status_code} {put.text[:200]}")
        targets = [
            Target(FLOOR, f"http://127.0.0.1:{floor_port}{INFER_PATH}", [floor.pid]),
            Target(MODEL_SERVER, f"http://127.0.0.1:{ms_port}{INFER_PATH}", [ms.pid]),
            Target(GATEWAY, f"http://127.0.0.1:{gw_port}{INFER_PATH}", [gw.pid, ms.pid], {"gateway": [gw.pid]}),
            # OIP over gRPC (bench/serve_grpc_load.py): the same servers; the gateway reaches the model server
            # as its GALLERY_GRPC_FORWARD default says (over REST)
            Target(MODEL_SERVER_GRPC, f"grpc://127.0.0.1:{ms_grpc}/mlp", [ms.pid], None, measure_grpc, grpc_check),
            Target(
                GATEWAY_GRPC,
                f"grpc://127.0.0.1:{gw_grpc}/mlp",
                [gw.pid, ms.pid],
                {"gateway": [gw.pid]},
                measure_grpc,
                grpc_check,
            ),
        ]
        missing = "nginx not found (`make bench` puts Debian's into the venv)"
        if nginx is not None:
            argv = nginx_command(nginx, work / "nginx", nginx_port, ms_port)
            ready = f"http://127.0.0.1:{nginx_port}/v2/health/ready"
            try:
                proxy = optional.enter_context(running("nginx", argv, {}, ready, work / "nginx.log", work))
            except RuntimeError as exc:
                missing = str(exc)
            else:
                url = f"http://127.0.0.1:{nginx_port}{INFER_PATH}"
                targets.append(Target(NGINX, url, [proxy.pid, ms.pid], {"nginx": [proxy.pid]}))
        print(f"  {', '.join(t.name for t in targets)}: side by side, {rounds} round(s) per cell", flush=True)
        rows: Rows = dict(side_by_side(targets, bodies, grid, seconds, rounds))
        if NGINX not in rows:
            rows[NGINX] = missing
        return rows


def grpc_check(url: str, body: Path, batch: int) -> None:
    check_grpc_answer(url, body, batch, LAYERS[-1])


def competitor(comp: Competitor, work: Path, onnx_path: Path, bodies, grid, seconds) -> dict:
    """A competitor's cells; RuntimeError with the reason when it cannot be installed or started."""
    if not comp.installed:
        print(f"  {comp.name}: installing into {comp.venv} (first run only)", flush=True)
    comp.install()
    port = free_port()
    argv, env = comp.command(onnx_path, port, free_port(), work)
    ready = f"http://127.0.0.1:{port}" + ("/v2/health/ready" if comp.name == "kserve" else "/readyz")
    with running(comp.name, argv, env, ready, work / f"{comp.name}.log", work) as proc:
        print(f"  {comp.name}: measuring", flush=True)
        return side_by_side(
            [Target(comp.name, f"http://127.0.0.1:{port}{comp.path}", [proc.pid])], bodies, grid, seconds, 1
        )


def print_table(rows: Rows, grid: list[tuple[int, int]]) -> None:
    floor = rows.get(FLOOR)
    print(
        f"\n{'server':<26} {'conc':>5} {'batch':>6} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7}"
        f" {'CPU µs/req':>11} {'(spread)':>13} {'x floor':>8}  parts"
    )
    for server, cells in rows.items():
        if isinstance(cells, str):
            print(f"{server:<26} not measured: {cells}")
            continue
        for key in grid:
            if key not in cells:
                continue
            c = cells[key]
            line = (
                f"{server:<26} {key[0]:>5} {key[1]:>6} {c['req_s']:>10,.0f} {c['p50_ms']:>9.2f} "
                f"{c['p99_ms']:>9.2f} {int(c['errors']):>7}"
            )
            if "cpu_us" in c:
                spread = f"{c['cpu_us_lo']:,.0f}-{c['cpu_us_hi']:,.0f}"
                line += f" {c['cpu_us']:>11,.0f} {spread:>13}"
                if isinstance(floor, dict) and key in floor and server != FLOOR:
                    # side by side with the floor: the per-round ratio; else the ratio of the medians
                    ratio = c["cpu_ratio"] if server in (MODEL_SERVER, GATEWAY) else c["cpu_us"] / floor[key]["cpu_us"]
                    line += f" {ratio:>7.2f}x"
                else:
                    line += f" {'':>8}"
                parts = [
                    f"{k[len('cpu_us_') :]} {v:,.0f} µs"
                    for k, v in c.items()
                    if k.startswith("cpu_us_") and k[7:] not in ("lo", "hi")
                ]
                line += "  " + ", ".join(parts)
            print(line)


def verdicts(rows: Rows, grid: list[tuple[int, int]]) -> list[str]:
    """PASS/MISS lines for the issues' targets; a target that could not be measured says so."""
    lines = []
    floor, ours, gateway = rows.get(FLOOR), rows.get(MODEL_SERVER), rows.get(GATEWAY)
    if isinstance(floor, dict) and isinstance(ours, dict):
        for key in [(1, 1), (1, 32)]:
            if key in ours:
                c = ours[key]
                ok = c["cpu_ratio"] <= 1.25
                lines.append(
                    f"{'PASS' if ok else 'MISS'}  model server CPU per request at conc {key[0]} batch {key[1]}: "
                    f"{c['cpu_us']:,.0f} vs floor {floor[key]['cpu_us']:,.0f} µs = {c['cpu_ratio']:.2f}x "
                    f"(rounds {c['cpu_ratio_lo']:.2f}-{c['cpu_ratio_hi']:.2f}; target <= 1.25x)"
                )
        for key in grid:
            if key[0] == 64:
                ratio = ours[key]["req_s"] / floor[key]["req_s"]
                lines.append(
                    f"{'PASS' if ratio >= 0.8 else 'MISS'}  model server req/s at conc 64 batch {key[1]}: "
                    f"{ours[key]['req_s']:,.0f} vs floor {floor[key]['req_s']:,.0f} = {ratio:.2f}x (target >= 0.8x)"
                )
    else:
        lines.append("SKIP  model server against the floor: one of them not measured")
    if isinstance(ours, dict) and isinstance(gateway, dict):
        for key in grid:
            alone, server = gateway[key]["cpu_us_gateway"], ours[key]["cpu_us"]
            ratio = alone / server
            lines.append(
                f"{'PASS' if ratio <= 0.5 else 'MISS'}  gateway CPU per request at conc {key[0]} batch {key[1]}: "
                f"{alone:,.0f} vs model server {server:,.0f} µs = {ratio:.2f}x (target <= 0.5x)"
            )
        for key in grid:
            if key[0] == 1:
                added = gateway[key]["p50_ms"] - ours[key]["p50_ms"]
                lines.append(
                    f"{'PASS' if added <= 0.5 else 'MISS'}  gateway adds {added:+.2f} ms p50 at conc 1 batch {key[1]} "
                    "(target <= 0.5 ms)"
                )
    nginx = rows.get(NGINX)
    if isinstance(ours, dict) and isinstance(nginx, dict):
        for key in grid:
            alone, server = nginx[key]["cpu_us_nginx"], ours[key]["cpu_us"]
            line = (
                f"REF   nginx (forwarding only) CPU per request at conc {key[0]} batch {key[1]}: {alone:,.0f} vs "
                f"model server {server:,.0f} µs = {alone / server:.2f}x"
            )
            if isinstance(gateway, dict):
                line += f"; the gateway spends {gateway[key]['cpu_us_gateway'] / alone:.1f}x nginx's"
            lines.append(line)
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
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="concurrency 1 and 64 only, 2 s cells, 2 rounds")
    parser.add_argument("--skip-competitors", action="store_true", help="leave out KServe and BentoML")
    parser.add_argument("--seconds", type=float, help="length of one cell (default 5, 2 with --quick)")
    parser.add_argument("--rounds", type=int, help="rounds of the side-by-side cells (default 3, 2 with --quick)")
    args = parser.parse_args(argv)
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    rounds = args.rounds or (2 if args.quick else 3)
    if seconds <= 0 or rounds < 1:
        parser.error("--seconds must be positive and --rounds at least 1")
    concurrencies = (1, 64) if args.quick else (1, 8, 64)
    grid = [(c, b) for b in (1, 32) for c in concurrencies]
    generator = "wrk" if shutil.which("wrk") else "asyncio generator (bench/serve_load.py, own process)"
    print(f"serve benchmark: MLP {'-'.join(map(str, LAYERS))}, {seconds:g} s per cell, load: {generator}")

    rows: Rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        onnx_path = work / "mlp.onnx"
        build_mlp(onnx_path)
        bodies = {b: work / f"body{b}.json" for b in (1, 32)}
        for batch, path in bodies.items():
            write_body(path, batch)
        rows["in-process ORT"] = {(1, b): in_process(onnx_path, b, min(seconds, 2.0)) for b in (1, 32)}
        try:
            rows.update(our_servers(work, onnx_path, bodies, grid, seconds, rounds))
        except RuntimeError as exc:
            rows[MODEL_SERVER] = str(exc)
        for comp in () if args.skip_competitors else COMPETITORS:
            try:
                rows[comp.name] = competitor(comp, work, onnx_path, bodies, grid, seconds)[comp.name]
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                rows[comp.name] = str(exc)
        if args.skip_competitors:
            rows["kserve"] = rows["bentoml"] = "skipped (--skip-competitors)"
    print_table(rows, grid)
    print("(in-process ORT: one caller, no HTTP; its conc column is 1. CPU µs/req: the server's process tree;")
    print(" the gateway row counts gateway + model server, 'gateway' beside it is the gateway alone;")
    print(" x floor: the median of the per-round ratios where measured side by side)\n")
    lines = verdicts(rows, grid)
    print("\n".join(lines))
    return 1 if any(line.startswith("MISS") for line in lines) else 0


if __name__ == "__main__":
    raise SystemExit(main())
