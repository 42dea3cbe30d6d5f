"""Starting the ranks as child processes, following their metrics, and stopping them.

The ranks of a job on this machine are started here, one `python -m gallery_trainer.rank` each, with the
environment a launcher would give them (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT): a
launcher in between is one more Python process importing torch (DeepSpeed's are two) before any rank
starts. Jobs over several machines go through the DeepSpeed launcher (`--hostfile`; a spec with
`engine.nodes` follows its launch plan, see `gallery_trainer.multinode`). Their output goes to
`train.log` in the workdir; the ranks keep compiled ops in this installation's folder
(`gallery_trainer.engine.build_ops`).

Importing torch and DeepSpeed is most of a rank's start (2.5-3.5 s of its 3.5-5 s here), so the trainer
keeps ranks started ahead of their job (`StandbyRanks`): a job takes as many as are ready and starts
the rest; the pool is topped up once the job has ended, so the imports never compete with training.
"""

from __future__ import annotations

import contextlib
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
from typing import Any, BinaryIO

import psutil

from gallery_trainer.engine.build_ops import extensions_dir
from gallery_trainer.engine.job import LOG_FILE, METRICS_FILE
from gallery_trainer.failures import JobCancelled, TrainingFailed
from gallery_trainer.rank import ERROR_FILE_PATTERN
from gallery_trainer.spec import JobSpec
from gallery_trainer.standby import StandbyAssignment, spawn, standby

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


def runs_locally(spec: JobSpec) -> bool:
    """Whether every rank of the job runs on this machine, started here without a launcher."""
    return not spec.engine.hostfile and not spec.engine.nodes


def rank_arguments(workdir: Path, *, resume: bool = False) -> list[str]:
    """The arguments of one rank of a job started here."""
    return ["--workdir", str(workdir), *(["--resume"] if resume else [])]


def rank_command(workdir: Path, *, resume: bool = False) -> list[str]:
    """The command of one rank of a job started here."""
    return [sys.executable, "-m", WORKER_MODULE, *rank_arguments(workdir, resume=resume)]


def launch_command(spec: JobSpec, workdir: Path, port: int, *, resume: bool = False) -> list[str]:
    """The launcher command that starts every rank of a job over several machines (see `runs_locally`).

    For a spec with `engine.nodes` it also writes the launch plan's hostfile into `workdir`, and raises
    TrainingFailed for a per_node plan over several machines (each node starts its own launcher).
    """
    worker_args = ["--workdir", str(workdir)] + (["--resume"] if resume else [])
    engine = spec.engine
    if engine.kind == "deepspeed" and engine.nodes:
        from gallery_trainer.multinode import PlanError, launch_plan  # it builds on this module

        try:
            plan = launch_plan(spec, workdir, port, resume=resume)
            command = plan.launcher_command()
        except PlanError as exc:
            raise TrainingFailed(str(exc)) from None
        plan.write()
        return command
    if engine.kind != "deepspeed" or not engine.hostfile:
        raise TrainingFailed(f"engine: a {engine.kind} job on this machine needs no launcher")
    command = [*deepspeed_launcher(), "--master_port", str(port), "--hostfile", engine.hostfile]
    return [*command, "--module", WORKER_MODULE, *worker_args]


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


def rank_environment(spec: JobSpec, port: int, rank: int | None = None) -> dict[str, str]:
    """The environment of the job's launcher, or with `rank` of that rank of a job started here."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TORCH_EXTENSIONS_DIR": str(extensions_dir())}
    # each rank would otherwise start a thread per core and the ranks would fight over the cores
    per_rank = max(1, (os.cpu_count() or 1) // spec.engine.ranks)
    env.setdefault("OMP_NUM_THREADS", str(per_rank))
    if rank is not None:
        # what the DeepSpeed launcher and torch.distributed.run tell a rank on a single machine
        world = str(spec.engine.ranks)
        env.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=world,
            LOCAL_SIZE=world,
            CROSS_RANK="0",
            CROSS_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
    return env


class RankProcesses:
    """The processes a job started (its ranks, or its launcher), each leading a new process group (with
    what it starts itself: a launcher's ranks, a compiler)."""

    def __init__(self, processes: list[subprocess.Popen[bytes]]) -> None:
        self.processes = processes
        self.groups = [process.pid for process in processes]

    def poll(self) -> int | None:
        """None while they run; else 0 when every one succeeded, or the first failure's exit code (a
        rank that failed leaves its peers waiting in a collective: the caller stops the rest)."""
        codes = [process.poll() for process in self.processes]
        failed = [code for code in codes if code not in (None, 0)]
        if failed:
            return failed[0]
        return None if None in codes else 0

    def stop(self) -> None:
        """Stop every process of the group; returns once none is left (a launcher may exit before its
        ranks do)."""
        for sig, grace in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, STOP_GRACE_SECONDS)):
            for group in self.groups:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, sig)
            if self._gone(grace):
                break
        self.poll()

    def _gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()  # reap ours so they do not linger as zombies
            if not _live_members(self.groups):
                return True
            time.sleep(0.05)
        return False


def _live_members(groups: list[int]) -> list[int]:
    """Processes of the groups that still run (zombies wait only for their parent to reap them)."""
    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) in groups and proc.info["status"] != psutil.STATUS_ZOMBIE:
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
    """Run every rank to the end, passing each new metrics line to `on_metrics`; ranks that `standby`
    holds ready are used first, and the pool is topped up once they have ended.

    Raises JobCancelled (after stopping the ranks) when `cancel` is set, and TrainingFailed with the
    ranks' reason when they exit unsuccessfully.
    """
    for stale in workdir.glob(ERROR_FILE_PATTERN.format(rank="*")):
        stale.unlink()
    try:
        with open(workdir / LOG_FILE, "ab") as log:
            ranks = _start(spec, workdir, port, resume, log)
        _follow(ranks, workdir, port, on_metrics, cancel)
    finally:
        standby.refill(spec.engine.ranks if runs_locally(spec) else 0)


def _follow(
    ranks: RankProcesses,
    workdir: Path,
    port: int,
    on_metrics: Callable[[dict[str, Any]], None] | None,
    cancel: threading.Event | None,
) -> None:
    tail = MetricsTail(workdir / METRICS_FILE)
    try:
        while (returncode := ranks.poll()) is None:
            if cancel is not None and cancel.wait(POLL_SECONDS):
                ranks.stop()
                raise JobCancelled("the job was cancelled")
            if cancel is None:
                threading.Event().wait(POLL_SECONDS)
            _deliver(tail, on_metrics)
        _deliver(tail, on_metrics)
        if returncode != 0:
            ranks.stop()  # the failed rank's peers
    except BaseException:
        ranks.stop()
        raise
    finally:
        remove_shared_buffers(port)
    if returncode != 0:
        raise TrainingFailed(failure_reason(workdir, returncode))


def _start(spec: JobSpec, workdir: Path, port: int, resume: bool, log: BinaryIO) -> RankProcesses:
    """Start the job's ranks here (standby ranks first), or its launcher."""
    local = runs_locally(spec)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        if not local:
            command = launch_command(spec, workdir, port, resume=resume)
            log.write(("$ " + " ".join(command) + "\n").encode())
            log.flush()
            processes.append(spawn(command, workdir, rank_environment(spec, port), stdout=log))
            return RankProcesses(processes)
        ready = standby.take(spec.engine.ranks)
        for index in range(spec.engine.ranks):
            env = rank_environment(spec, port, index)
            if index < len(ready) and _assign(ready[index], index, workdir, resume, env, log):
                processes.append(ready[index])
            else:
                command = rank_command(workdir, resume=resume)
                log.write(("$ " + f"RANK={index} " + " ".join(command) + "\n").encode())
                log.flush()
                processes.append(spawn(command, workdir, env, stdout=log))
    except BaseException:
        if processes:
            RankProcesses(processes).stop()
        raise
    return RankProcesses(processes)


def _assign(
    process: subprocess.Popen[bytes], index: int, workdir: Path, resume: bool, env: dict[str, str], log: BinaryIO
) -> bool:
    """Give a standby rank its place in the job; False when it died before it could take it (the pool found
    it running a moment before), and the job starts that rank itself."""
    shown = " ".join(rank_command(workdir, resume=resume))
    log.write(f"$ RANK={index} {shown} (a standby rank, pid {process.pid})\n".encode())
    log.flush()  # before the rank writes its own lines after it
    assignment = StandbyAssignment(rank_arguments(workdir, resume=resume), env, str(workdir), log.name)
    assert process.stdin is not None
    try:
        process.stdin.write(assignment.line())
        process.stdin.close()
    except OSError:  # its end of the pipe is closed: it has exited
        log.write(f"(the standby rank, pid {process.pid}, ended before it took the job)\n".encode())
        return False
    return True


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
