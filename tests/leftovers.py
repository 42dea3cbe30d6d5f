"""What a killed test run leaves behind, stopped by the next one.

pytest killed with SIGKILL (a closed terminal, an out-of-memory kill, a CI timeout) runs no fixture's
teardown: nats-servers, the PostgreSQL cluster, moto, redis and model servers go on running, holding
ports and memory. So each run tags its environment, which every process the tests start inherits
(`RUN_TAG`: the controlling pytest's pid and start time), and the next run stops the processes whose
tag names a run that is no longer alive, and removes their PostgreSQL folders. A run still going
(another checkout's `make test`) is left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import psutil

RUN_TAG = "MODELGALLERY_TEST_RUN"
OWNER_FILE = "test-run"  # in a PostgreSQL cluster's folder: the tag of the run that made it
PG_FOLDERS = "gallery-pg-*"


def this_run() -> str:
    me = psutil.Process()
    return f"{me.pid}:{me.create_time():.3f}"


def alive(tag: str) -> bool:
    """Whether the run `tag` names still runs (the same pid and start time: pids are reused)."""
    pid, _, started = tag.partition(":")
    try:
        return f"{psutil.Process(int(pid)).create_time():.3f}" == started
    except (ValueError, psutil.Error):
        return False


def left_behind(ours: str) -> list[psutil.Process]:
    """The processes tagged by a run other than `ours` that is no longer alive."""
    found = []
    for process in psutil.process_iter():
        try:
            tag = process.environ().get(RUN_TAG)
        except psutil.Error:  # gone, a kernel thread, or not ours to read
            continue
        if tag and tag != ours and not alive(tag):
            found.append(process)
    return found


def sweep(ours: str, temp: Path | None = None) -> list[str]:
    """Stop what dead runs left (SIGTERM, then SIGKILL after 10 s) and remove their PostgreSQL folders;
    returns a line per process stopped."""
    processes = left_behind(ours)
    stopped = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            stopped.append(f"{process.pid} {' '.join(process.cmdline()[:3])}")
            process.terminate()
    _, still = psutil.wait_procs(processes, timeout=10)
    for process in still:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(still, timeout=5)
    for folder in Path(temp or tempfile.gettempdir()).glob(PG_FOLDERS):
        with contextlib.suppress(OSError):
            owner = (folder / OWNER_FILE).read_text().strip()
            if owner != ours and not alive(owner):
                shutil.rmtree(folder, ignore_errors=True)
    return stopped


def tag_this_run() -> str:
    """Stop what earlier, killed runs left, then tag this run's environment (the controlling process only:
    pytest-xdist workers inherit the tag)."""
    ours = os.environ.get(RUN_TAG) or this_run()
    if RUN_TAG not in os.environ:
        stopped = sweep(ours)
        if stopped:
            print(f"stopped {len(stopped)} processes a killed test run had left: " + "; ".join(stopped))
        os.environ[RUN_TAG] = ours
    return ours
