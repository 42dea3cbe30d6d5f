"""Starting the ranks as child processes, following their metrics, and stopping them.

A job of one rank on this machine runs that rank as the only process (`python -m gallery_trainer.rank`,
with the environment a launcher would give it). Larger DeepSpeed jobs go through the DeepSpeed launcher
(`deepspeed --num_gpus N --master_port P --module gallery_trainer.rank ...`, or `--hostfile` for several
machines; a spec with `engine.nodes` follows its launch plan, see `gallery_trainer.multinode`); DDP jobs
through `python -m torch.distributed.run`. Their output goes to `train.log` in the workdir; the ranks
keep compiled ops in this installation's folder (`gallery_trainer.engine.build_ops`).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from gallery_common.processes import die_with_parent
from gallery_trainer.engine.build_ops import extensions_dir
from gallery_trainer.engine.job import LOG_FILE, METRICS_FILE
from gallery_trainer.failures import JobCancelled, TrainingFailed
from gallery_trainer.rank import ERROR_FILE_PATTERN
from gallery_trainer.spec import JobSpec

WORKER_MODULE = "gallery_trainer.rank"
POLL_SECONDS = 0.2
STOP_GRACE_SECONDS = 10.0
SHM_DIR = Path("/dev/shm")


@functools.cache
def deepspeed_import_error() -> str | None:
    """Why DeepSpeed cannot be imported here, or None when it can."""
    if importlib.util.find_spec("deepspeed") is None:
        return "the deepspeed package is not installed"
    try:
        import deepspeed  # noqa: F401
    except Exception as exc:  # a broken install raises anything from its import-time probes
        return f"deepspeed cannot be imported ({type(exc).__name__}: {exc})"
    return None


def deepspeed_launcher() -> list[str]:
    """The DeepSpeed launcher of this Python environment."""
    script = Path(sys.executable).with_name("deepspeed")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "deepspeed.launcher.runner"]


def runs_directly(spec: JobSpec) -> bool:
    """Whether the job is one rank on this machine, started without a launcher process above it
    (each launcher is a Python process that imports torch, and DeepSpeed's are two)."""
    engine = spec.engine
    return engine.ranks == 1 and not engine.hostfile and not engine.nodes


def launch_command(spec: JobSpec, workdir: Path, port: int, *, resume: bool = False) -> list[str]:
    """The command that starts every rank of `spec`'s engine for the job prepared in `workdir`.

    For a spec with `engine.nodes` it also writes the launch plan's hostfile into `workdir`, and raises
    TrainingFailed for a per_node plan over several machines (each node starts its own launcher).
    """
    worker_args = ["--workdir", str(workdir)] + (["--resume"] if resume else [])
    engine = spec.engine
    if runs_directly(spec):
        return [sys.executable, "-m", WORKER_MODULE, *worker_args]
    if engine.kind == "deepspeed" and engine.nodes:
        from gallery_trainer.multinode import PlanError, launch_plan  # it builds on this module

        try:
            plan = launch_plan(spec, workdir, port, resume=resume)
            command = plan.launcher_command()
        except PlanError as exc:
            raise TrainingFailed(str(exc)) from None
        plan.write()
        return command
    if engine.kind == "deepspeed":
        command = [*deepspeed_launcher(), "--master_port", str(port)]
        if engine.hostfile:
            command += ["--hostfile", engine.hostfile]
        else:
            command += ["--num_gpus", str(engine.ranks)]
        return [*command, "--module", WORKER_MODULE, *worker_args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(engine.ranks),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        "-m",
        WORKER_MODULE,
        *worker_args,
    ]


class MetricsTail:
    """Reads the complete lines appended to metrics.jsonl since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read_new(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as file:
                file.seek(self.offset)
                chunk = file.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        data = self.partial + chunk
        *lines, self.partial = data.split(b"\n")
        parsed = []
        for line in lines:
            try:
                parsed.append(json.loads(line))
            except ValueError:
                continue
        return parsed


def rank_environment(spec: JobSpec, port: int) -> dict[str, str]:
    """The environment the job's processes start with."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    # each rank would otherwise start a thread per core and the ranks would fight over the cores
    per_rank = max(1, (os.cpu_count() or 1) // spec.engine.ranks)
    env.setdefault("OMP_NUM_THREADS", str(per_rank))
    env["TORCH_EXTENSIONS_DIR"] = str(extensions_dir())
    if runs_directly(spec):
        # what the DeepSpeed launcher and torch.distributed.run tell a rank of a world of one
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return env


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the launcher and every rank it started (they share its new session's process group).

    Returns once no process of the group is left: the launcher may exit before its ranks do.
    """
    for sig, grace in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, STOP_GRACE_SECONDS)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        if _group_gone(process, grace):
            break
    process.poll()


def _group_gone(process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        process.poll()  # reap the launcher so it does not linger as a zombie
        if not _live_members(process.pid):
            return True
        time.sleep(0.05)
    return False


def _live_members(pgid: int) -> list[int]:
    """Processes of the group that still run (zombies wait only for their parent to reap them)."""
    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def failure_reason(workdir: Path, returncode: int) -> str:
    """What to tell the user about ranks that exited with `returncode`."""
    reports = []
    for path in sorted(workdir.glob(ERROR_FILE_PATTERN.format(rank="*"))):
        try:
            reports.append({**json.loads(path.read_text()), "written": path.stat().st_mtime_ns})
        except ValueError:
            continue
    if reports:
        # the rank that failed first caused the others' failures (a peer closing its connection)
        first = min(reports, key=lambda doc: (not doc.get("user_error"), doc["written"]))
        if first.get("user_error"):
            return str(first["message"])
        return f"training failed on rank {first.get('rank')}: {first.get('message')}"
    log = workdir / LOG_FILE
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.exists() else []
    tail = " | ".join(lines[-5:]) or "no output"
    return f"the training ranks exited with code {returncode}: {tail}"


def run_ranks(
    spec: JobSpec,
    workdir: Path,
    port: int,
    *,
    resume: bool = False,
    on_metrics: Callable[[dict[str, Any]], None] | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Run every rank to the end, passing each new metrics line to `on_metrics`.

    Raises JobCancelled (after stopping the ranks) when `cancel` is set, and TrainingFailed with the
    ranks' reason when they exit unsuccessfully.
    """
    for stale in workdir.glob(ERROR_FILE_PATTERN.format(rank="*")):
        stale.unlink()
    command = launch_command(spec, workdir, port, resume=resume)
    with open(workdir / LOG_FILE, "ab") as log:
        log.write(("$ " + " ".join(command) + "\n").encode())
        log.flush()
        process = subprocess.Popen(
            command,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=rank_environment(spec, port),
            start_new_session=True,
            # a trainer SIGKILLed mid-job takes its launcher with it (which stops its ranks); this thread
            # waits for the launcher, so it lives as long as the launcher does
            preexec_fn=die_with_parent(),
        )
    tail = MetricsTail(workdir / METRICS_FILE)
    try:
        while process.poll() is None:
            if cancel is not None and cancel.wait(POLL_SECONDS):
                _stop(process)
                raise JobCancelled("the job was cancelled")
            if cancel is None:
                threading.Event().wait(POLL_SECONDS)
            _deliver(tail, on_metrics)
        _deliver(tail, on_metrics)
    except BaseException:
        _stop(process)
        raise
    finally:
        remove_shared_buffers(port)
    if process.returncode != 0:
        raise TrainingFailed(failure_reason(workdir, process.returncode))


def remove_shared_buffers(port: int, shm: Path = SHM_DIR) -> list[Path]:
    """Delete the shared-memory buffers DeepSpeed's CPU all-reduce left for the job on `port`.

    Every rank of a DeepSpeed job on the CPU creates `/dev/shm/deepspeed_allreduce_buffer_*_<port>_<rank>`
    (about 70 MB) and never removes it; /dev/shm is RAM, so without this a trainer that runs a few
    hundred jobs fills the machine's memory.
    """
    removed = []
    for path in shm.glob(f"deepspeed_allreduce_buffer_*_{port}_*"):
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _deliver(tail: MetricsTail, on_metrics: Callable[[dict[str, Any]], None] | None) -> None:
    for line in tail.read_new():
        if on_metrics is not None:
            on_metrics(line)
