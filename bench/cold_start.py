"""Cold starts (issue 20): process launch to the first correct answer, each server several times.

    .venv/bin/python bench/cold_start.py [--runs 5] [--skip-competitors]

A cold start ends at the first *correct* answer, not at an open port:

- model servers (the floor `bench/serve_floor.py`, ours, KServe 0.21 from bench/.venvs/kserve): a
  `POST /v2/models/mlp/infer` whose outputs match ONNX Runtime run in this process;
- the gateway (`python -m gallery_common.serve gateway`, as `gallery up` starts it, NATS up, the route
  in its snapshot file): the same inference routed through it to a model server already running;
- the registry (`python -m gallery_common.serve registry`, NATS up, SQLite at head): `GET
  /api/v1/models` listing the model it holds; MLflow's server (bench/.venvs/mlflow, `mlflow server`,
  SQLite backend, one worker) on `GET /api/2.0/mlflow/registered-models/search` listing the same.

Servers of one comparison take turns launch by launch, so the load of the machine falls on all of
them alike; each is launched once before the timed runs (bytecode written and page cache warm:
PYTHONDONTWRITEBYTECODE is unset for them). Figures are
min / median / max over the runs, with the ratio of medians to the peer. Targets: our model server
<= 0.6x KServe's, the gateway <= 1.2 s, the registry <= 1.5 s.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import LAYERS, build_mlp, write_body
from serve import running as serve_running
from serve_competitors import COMPETITORS, Competitor

from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port

BENCH = Path(__file__).resolve().parent
INFER_PATH = "/v2/models/mlp/infer"
DEADLINE_S = 120.0
POLL_S = 0.005
MODEL_SERVER_TARGET = 0.6  # x KServe's median
GATEWAY_TARGET_S = 1.2
REGISTRY_TARGET_S = 1.5
MLFLOW = Competitor("mlflow", ("mlflow",), "/api/2.0/mlflow/registered-models/search")
KSERVE = next(c for c in COMPETITORS if c.name == "kserve")

# checks one answer: None when it is correct, else why not
Check = Callable[[httpx.Response], str | None]


@dataclass
class Server:
    """How to launch one server and ask it the question whose correct answer ends its cold start."""

    name: str
    argv: list[str]
    env: dict[str, str]
    method: str
    url: str
    check: Check
    body: bytes | None = None


@dataclass
class Runs:
    """One server's timed launches: wall seconds to the first correct answer, and the CPU seconds its
    processes spent by then (less disturbed by the load of the machine than the wall time)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


Results = dict[str, Runs | str]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live children."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def cold_start(server: Server, log: Path, cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds from launch to the first correct answer; the process is stopped before returning."""
    headers = {"Content-Type": "application/json"} if server.body is not None else None
    with httpx.Client(timeout=10) as client:
        started = time.perf_counter()
        proc = launch(server, log, cwd)
        try:
            wrong = "no answer"
            while time.perf_counter() - started < DEADLINE_S:
                if proc.poll() is not None:
                    tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
                    raise RuntimeError(f"{server.name} exited with {proc.returncode}: {tail}")
                try:
                    answer = client.request(server.method, server.url, content=server.body, headers=headers)
                except httpx.TransportError:
                    time.sleep(POLL_S)
                    continue
                wrong = server.check(answer) or ""
                if not wrong:
                    return time.perf_counter() - started, cpu_seconds(proc.pid)
                time.sleep(POLL_S)
            raise RuntimeError(f"{server.name}: no correct answer after {DEADLINE_S:.0f} s (last: {wrong})")
        finally:
            stop(proc)


def launch(server: Server, log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """The server's process in its own session (so that `stop` reaches its children), output to `log`."""
    with log.open("wb") as out:
        env = {**os.environ, **server.env}
        return subprocess.Popen(
            server.argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def infer_check(expected: np.ndarray) -> Check:
    """A correct inference: 200 and the outputs ONNX Runtime computes in this process."""

    def check(answer: httpx.Response) -> str | None:
        if answer.status_code != 200:
            return f"{answer.status_code} {answer.text[:120]}"
        try:
            data = np.asarray(orjson.loads(answer.content)["outputs"][0]["data"], dtype=np.float32)
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            return f"unreadable answer ({exc}): {answer.text[:120]}"
        if data.size != expected.size or not np.allclose(data, expected.ravel(), atol=1e-4):
            return "wrong outputs"
        return None

    return check


def lists_model(key: str, name: str) -> Check:
    """A correct listing: 200 and the model `name` among the `key` entries."""

    def check(answer: httpx.Response) -> str | None:
        if answer.status_code != 200:
            return f"{answer.status_code} {answer.text[:120]}"
        names = [entry.get("name") for entry in answer.json().get(key, [])]
        return None if name in names else f"{name!r} not listed: {names}"

    return check


def summary(samples: list[float]) -> str:
    return f"{min(samples):5.2f} {statistics.median(samples):6.2f} {max(samples):5.2f}"


def measure(servers: list[Server], runs: int, work: Path) -> Results:
    """Each server launched once untimed, then `runs` timed launches, the servers taking turns."""
    results: Results = {}
    live = []
    for server in servers:
        try:
            cold_start(server, work / f"{server.name}-warmup.log", work)
            live.append(server)
            results[server.name] = Runs()
        except RuntimeError as exc:
            results[server.name] = str(exc)
    for i in range(runs):
        for server in list(live):
            try:
                wall, cpu = cold_start(server, work / f"{server.name}-{i}.log", work)
            except RuntimeError as exc:
                results[server.name] = str(exc)
                live.remove(server)
                continue
            samples = results[server.name]
            assert isinstance(samples, Runs)
            samples.wall.append(wall)
            samples.cpu.append(cpu)
    return results


def print_rows(title: str, results: Results, peer: str | None) -> None:
    """min / median / max of wall and CPU seconds, and the ratio of medians to the peer's."""
    print(f"\n{title}")
    print(f"  {'':<32} {'wall s: min  median  max':>24} {'CPU s: min  median  max':>24}")
    base = results.get(peer) if peer else None
    for name, runs in results.items():
        if isinstance(runs, str):
            print(f"  {name:<32} not measured: {runs}")
            continue
        ratio = ""
        if isinstance(base, Runs) and name != peer:
            wall = statistics.median(runs.wall) / statistics.median(base.wall)
            cpu = statistics.median(runs.cpu) / statistics.median(base.cpu)
            ratio = f"   {wall:.2f}x wall, {cpu:.2f}x CPU of {peer}"
        print(f"  {name:<32} {summary(runs.wall):>24} {summary(runs.cpu):>24}{ratio}")


def median_of(results: Results, name: str) -> float | None:
    runs = results.get(name)
    return statistics.median(runs.wall) if isinstance(runs, Runs) and runs.wall else None


def model_servers(work: Path, onnx_path: Path, body: bytes, expected: np.ndarray, competitors: bool) -> list[Server]:
    python = sys.executable
    check = infer_check(expected)
    root = work / "artifacts"
    (root / "mlp").mkdir(parents=True, exist_ok=True)
    shutil.copy(onnx_path, root / "mlp" / "model.onnx")
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    env = {"GALLERY_HOME": str(work / "home"), "GALLERY_ARTIFACT_ROOT": root.as_uri(), "GALLERY_API_TOKENS": ""}
    servers = []
    floor_port = free_port()
    servers.append(
        Server(
            "floor (FastAPI + orjson + ORT)",
            [python, str(BENCH / "serve_floor.py"), str(onnx_path), str(floor_port)],
            {},
            "POST",
            f"http://127.0.0.1:{floor_port}{INFER_PATH}",
            check,
            body,
        )
    )
    port = free_port()
    argv = [python, "-m", "gallery_deployer.modelserver", "--model", "mlp", "--version", "1", "--sha256", digest]
    argv += ["--artifact", (root / "mlp" / "model.onnx").as_uri(), "--port", str(port)]
    servers.append(Server("our model server", argv, env, "POST", f"http://127.0.0.1:{port}{INFER_PATH}", check, body))
    if competitors:
        if not KSERVE.installed:
            print(f"  kserve: installing into {KSERVE.venv} (first run only)", flush=True)
        KSERVE.install()
        port = free_port()
        argv, kserve_env = KSERVE.command(onnx_path, port, free_port(), work)
        servers.append(Server("KServe", argv, kserve_env, "POST", f"http://127.0.0.1:{port}{INFER_PATH}", check, body))
    return servers


def gateway_server(work: Path, nats_url: str, backend_url: str, body: bytes, expected: np.ndarray) -> Server:
    home = work / "gateway-home"
    routes = home / "gateway" / "routes.json"
    routes.parent.mkdir(parents=True, exist_ok=True)
    backend = {"id": "ms1", "url": backend_url, "version": "1", "weight": 1}
    routes.write_bytes(orjson.dumps({"revision": 0, "routes": {"mlp": {"backends": [backend], "policy": {}}}}))
    port = free_port()
    env = {"GALLERY_HOME": str(home), "GALLERY_PORT": str(port), "GALLERY_NATS_URL": nats_url, "GALLERY_API_TOKENS": ""}
    argv = [sys.executable, "-m", "gallery_common.serve", "gateway"]
    return Server("our gateway", argv, env, "POST", f"http://127.0.0.1:{port}{INFER_PATH}", infer_check(expected), body)


def our_registry(work: Path, nats_url: str) -> Server:
    """Our registry over a SQLite database at head holding one model, `mlp`."""
    home = work / "registry-home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {"GALLERY_HOME": str(home), "GALLERY_PORT": str(port), "GALLERY_NATS_URL": nats_url, "GALLERY_API_TOKENS": ""}
    env["GALLERY_LOG_LEVEL"] = "WARNING"
    base = f"http://127.0.0.1:{port}"
    server = Server(
        "our registry",
        [sys.executable, "-m", "gallery_common.serve", "registry"],
        env,
        "GET",
        f"{base}/api/v1/models",
        lists_model("models", "mlp"),
    )
    # the first start migrates the new database to head; the timed ones find it there
    with running(server, work / "registry-seed.log", work, f"{base}/readyz"):
        created = httpx.post(f"{base}/api/v1/models", json={"name": "mlp"}, timeout=30)
        if created.status_code != 201:
            raise RuntimeError(f"registry refused the model: {created.status_code} {created.text[:200]}")
    return server


def mlflow_registry(work: Path) -> Server:
    """MLflow's tracking server over its own SQLite database holding one registered model, `mlp`."""
    if not MLFLOW.installed:
        print(f"  mlflow: installing into {MLFLOW.venv} (first run only)", flush=True)
    MLFLOW.install()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [str(MLFLOW.venv / "bin" / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}", "--workers", "1"]
    argv += ["--default-artifact-root", (work / "mlflow-artifacts").as_uri()]
    # its job runner (a second process, for GenAI jobs) stays off, as in facts.md's measurement
    no_jobs = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = Server("MLflow server", argv, no_jobs, "GET", base + MLFLOW.path, lists_model("registered_models", "mlp"))
    with running(server, work / "mlflow-seed.log", work, f"{base}/health"):
        created = httpx.post(f"{base}/api/2.0/mlflow/registered-models/create", json={"name": "mlp"}, timeout=30)
        if created.status_code != 200:
            raise RuntimeError(f"MLflow refused the model: {created.status_code} {created.text[:200]}")
    return server


def running(server: Server, log: Path, cwd: Path, ready_url: str) -> AbstractContextManager[None]:
    """The server held open, `ready_url` answering 200, for the body of a with-statement."""
    return serve_running(server.name, server.argv, server.env, ready_url, log, cwd)


def under(results: Results, name: str, target_s: float) -> str:
    """The PASS/MISS line of a target in seconds on the median."""
    median = median_of(results, name)
    if median is None:
        return f"SKIP  {name}: not measured"
    return f"{'PASS' if median <= target_s else 'MISS'}  {name} {median:.2f} s (target <= {target_s} s)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed launches of each server (default 5)")
    parser.add_argument("--skip-competitors", action="store_true", help="leave out KServe and MLflow")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    competitors = not args.skip_competitors
    # An installed server runs from compiled bytecode; with this set (as in some shells and CI) every
    # launch would compile again each module edited since its .pyc, ours far more than the peers'.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    print(f"cold starts: launch to the first correct answer, {args.runs} runs each; {os.cpu_count()} CPUs")

    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        work = Path(tmp)
        onnx_path = work / "mlp.onnx"
        build_mlp(onnx_path)
        write_body(work / "body.json", 1)
        body = (work / "body.json").read_bytes()
        tensor = orjson.loads(body)["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        expected = session.run(None, {"input": x})[0]
        assert expected.shape == (1, LAYERS[-1])

        try:
            servers = model_servers(work, onnx_path, body, expected, competitors)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"KServe could not be installed: {exc}")
            servers = model_servers(work, onnx_path, body, expected, False)
        served = measure(servers, args.runs, work)
        print_rows("model servers: POST /v2/models/mlp/infer answered correctly", served, "KServe")
        ours, kserve = median_of(served, "our model server"), median_of(served, "KServe")
        if ours is not None and kserve is not None:
            ok = ours <= MODEL_SERVER_TARGET * kserve
            lines.append(
                f"{'PASS' if ok else 'MISS'}  model server {ours:.2f} s = {ours / kserve:.2f}x KServe's {kserve:.2f} s "
                f"(target <= {MODEL_SERVER_TARGET}x)"
            )
        else:
            lines.append("SKIP  model server vs KServe: one of them not measured")

        with EmbeddedNats(work / "nats") as nats:
            backend = next(s for s in servers if s.name == "our model server")
            backend_url = backend.url.removesuffix(INFER_PATH)
            with running(backend, work / "backend.log", work, f"{backend_url}/v2/health/ready"):
                gateway = measure([gateway_server(work, nats.url, backend_url, body, expected)], args.runs, work)
            print_rows("gateway: the same inference routed to a running model server", gateway, None)
            lines.append(under(gateway, "our gateway", GATEWAY_TARGET_S))

            regs = [our_registry(work, nats.url)]
            if competitors:
                try:
                    regs.append(mlflow_registry(work))
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    print(f"MLflow could not be set up: {exc}")
            registry = measure(regs, args.runs, work)
            print_rows("registries: a model listed by their REST API", registry, "MLflow server")
            lines.append(under(registry, "our registry", REGISTRY_TARGET_S))
    print()
    print("\n".join(lines))
    return 1 if any(line.startswith("MISS") for line in lines) else 0


if __name__ == "__main__":
    raise SystemExit(main())
