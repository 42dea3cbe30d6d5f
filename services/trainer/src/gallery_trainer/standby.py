"""Ranks started ahead of their job, so a job does not wait for torch and DeepSpeed to import.

A standby rank is `python -m gallery_trainer.rank --standby`: it imports what training needs, then waits
for one job on its stdin (a `StandbyAssignment`). Importing torch and DeepSpeed is most of a rank's start
(2.5-3.5 s of its 3.5-5 s here); the pool is topped up only once a job has ended, so those imports never
compete with a job's training for the cores. This module imports neither, so the trainer can keep the
pool without loading them itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from gallery_common.processes import die_with_parent
from gallery_common.telemetry import gauge, get_logger

RANK_MODULE = "gallery_trainer.rank"
LET_GO_SECONDS = 10.0  # how long a standby let go may take to exit before it is killed
LOADED_LINE = b"gallery-standby-loaded\n"  # a standby's one line on its stdout, once its imports are done
log = get_logger(__name__)
READY = gauge("trainer_standby_rank_processes", "Rank processes started ahead of their job, waiting for one.")


@dataclass(frozen=True)
class StandbyAssignment:
    """The job a standby rank is given: what a rank started for it would have had."""

    argv: list[str]  # the rank's arguments
    env: dict[str, str]  # set over the standby's environment (RANK, WORLD_SIZE, MASTER_PORT, ...)
    workdir: str  # the working directory
    log: str  # the file stdout and stderr go to from here on (appended)

    def line(self) -> bytes:
        return json.dumps(asdict(self)).encode() + b"\n"

    @classmethod
    def parse(cls, line: bytes) -> StandbyAssignment:
        return cls(**json.loads(line))


def spawn(
    command: list[str],
    cwd: Path,
    env: dict[str, str],
    *,
    stdout: BinaryIO | int,
    stdin: int = subprocess.DEVNULL,
    stderr: int = subprocess.STDOUT,
) -> subprocess.Popen[bytes]:
    """A process of a job, leading a new process group in the trainer's session, that gets SIGTERM when
    the trainer dies: spawn from a thread that lives as long as the process (see `die_with_parent`)."""
    return subprocess.Popen(
        command,
        cwd=cwd,
        stdout=stdout,
        stderr=stderr,
        stdin=stdin,
        env=env,
        preexec_fn=die_with_parent(),
        process_group=0,
    )


class StandbyRanks:
    """Rank processes started ahead of their job (`python -m gallery_trainer.rank --standby`).

    After a job of N local ranks the pool holds min(N, `most`) ranks (at least one), so a trainer that
    runs 2-rank jobs keeps two and one that runs single-rank jobs keeps one. A job may take one that is
    still importing (it is further along than a new one). They are started by the pool's own thread,
    which lives as long as the trainer: they get SIGTERM when the trainer dies. A standby found dead
    when a job takes it is dropped with its exit code logged; the job starts that rank itself.
    """

    def __init__(self) -> None:
        self.most = 0  # 0: no standby ranks (every rank is started for its job)
        self._held: list[subprocess.Popen[bytes]] = []
        self._loaded: set[int] = set()  # pids of held ranks whose imports are done
        self._wanted = 0
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def keep(self, most: int) -> None:
        """Keep up to `most` standby ranks from now on, starting with one."""
        with self._lock:
            self.most, self._closed = most, False
            if most <= 0:
                return
            self._wanted = 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="standby-ranks", daemon=True)
                self._thread.start()
            self._lock.notify_all()

    def take(self, count: int) -> list[subprocess.Popen[bytes]]:
        """Up to `count` standby ranks, loaded ones first, for the caller to give a job (a
        `StandbyAssignment` on their stdin)."""
        with self._lock:
            alive = []
            for process in self._held:
                code = process.poll()
                if code is None:
                    alive.append(process)
                else:
                    log.warning("standby_rank_died", pid=process.pid, exit_code=code)
            alive.sort(key=lambda process: process.pid not in self._loaded)
            taken, self._held = alive[:count], alive[count:]
            self._loaded -= {process.pid for process in taken}
            self._count()
            return taken

    def refill(self, ranks: int) -> None:
        """A job of `ranks` local ranks has ended: hold min(ranks, most) standby ranks (at least one)."""
        with self._lock:
            if self.most <= 0 or self._closed:
                return
            self._wanted = min(max(ranks, 1), self.most)
            self._lock.notify_all()

    def close(self) -> None:
        """Let every standby rank go (each exits when its stdin closes) and start no more."""
        with self._lock:
            self._closed = True
            held, self._held = self._held, []
            self._loaded.clear()
            self._count()
            self._lock.notify_all()
        _let_go(held)

    @property
    def ready(self) -> int:
        """Standby ranks that have done their imports and wait for a job."""
        with self._lock:
            return len(self._loaded)

    def _count(self) -> None:
        READY.set(len(self._loaded))

    def _run(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._closed or len(self._held) < self._wanted)
                if self._closed:
                    self._thread = None
                    return
                missing = self._wanted - len(self._held)
            started = []
            try:
                for _ in range(missing):  # they import side by side
                    started.append(
                        spawn(
                            [sys.executable, "-m", RANK_MODULE, "--standby"],
                            Path.cwd(),
                            {**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE,
                            stderr=subprocess.DEVNULL,
                        )
                    )
            except OSError as exc:
                log.error("standby_rank_start_failed", reason=f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self._wanted = 0
            with self._lock:
                closed = self._closed
                if not closed:
                    self._held.extend(started)
            if closed:
                _let_go(started)
                continue
            for process in started:
                self._wait_loaded(process)

    def _wait_loaded(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        loaded = False
        with process.stdout:  # DeepSpeed logs to stdout while it imports; b"" when the rank died first
            for line in process.stdout:
                if line == LOADED_LINE:
                    loaded = True
                    break
        with self._lock:
            if loaded and any(held is process for held in self._held):
                self._loaded.add(process.pid)
                self._count()


standby = StandbyRanks()  # the trainer service's pool (`keep` sets its size; empty elsewhere)


def _let_go(processes: list[subprocess.Popen[bytes]]) -> None:
    """Close the standbys' stdin (they exit without running anything) and wait for them."""
    for process in processes:
        with contextlib.suppress(OSError):
            assert process.stdin is not None
            process.stdin.close()
    for process in processes:
        try:
            process.wait(LET_GO_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
