"""A killed `make test` leaves servers running; the next run stops them (tests/leftovers.py), and leaves a run
that is still going alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
from leftovers import OWNER_FILE, RUN_TAG, alive, sweep, this_run

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def started_by(tag: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(SLEEPER, env={**os.environ, RUN_TAG: tag})


def test_what_a_dead_run_left_is_stopped_and_a_live_runs_is_not(tmp_path: Path) -> None:
    ours = os.environ.get(RUN_TAG) or this_run()
    dead_run = f"{psutil.Process().pid}:12.000"  # our pid, another start time: a run that ended
    live_run = f"{os.getppid()}:{psutil.Process(os.getppid()).create_time():.3f}"  # still going
    assert alive(ours) and alive(live_run) and not alive(dead_run)
    orphan, running, own = started_by(dead_run), started_by(live_run), started_by(ours)
    for run, name in ((dead_run, "gallery-pg-dead"), (live_run, "gallery-pg-live")):
        (tmp_path / name).mkdir()
        (tmp_path / name / OWNER_FILE).write_text(run)
    try:
        stopped = sweep(ours, tmp_path)
        assert [line.split()[0] for line in stopped] == [str(orphan.pid)]
        assert orphan.wait(5) is not None
        assert running.poll() is None and own.poll() is None
        assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery-pg-live"]
    finally:
        for process in (orphan, running, own):
            process.kill()
            process.wait()
