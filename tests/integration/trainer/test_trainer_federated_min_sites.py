"""A federated job whose `min_sites` do not come within `round_timeout_s`, at the start or after sites left,
ends with that reason, and no site is left waiting on it."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
from federation_harness import federated_spec, job_in_thread, round_records, site_folders, sites_running
from waiting import wait_for

from gallery_common.netutil import free_port
from gallery_trainer.pipeline import TrainingFailed, run_job


def test_too_few_sites_end_the_job_with_the_reason(tmp_path: Path) -> None:
    port = free_port()
    spec = federated_spec(port, rounds=3, min_sites=3, round_timeout_s=8)
    folders = site_folders(spec, tmp_path / "sites", n_sites=2)
    with sites_running(port, folders, tmp_path) as sites:
        with pytest.raises(TrainingFailed) as failed:
            run_job(spec, tmp_path / "job")
        # no site is left waiting on a federation that gave up
        ended = [process.wait(40) for process in sites.values()]
    # the sites take a few seconds to start: two of them, or fewer on a loaded machine, were connected
    expected = r"round 0: [0-2] of the 3 sites needed \(min_sites\) were connected within 8 s \(round_timeout_s\)"
    assert re.fullmatch(expected, str(failed.value)), failed.value
    assert len(ended) == 2


def test_a_round_that_cannot_gather_min_sites_after_a_site_left_ends_the_job(tmp_path: Path) -> None:
    port = free_port()
    # long enough for both sites to start on a loaded machine (round 0 waits that long for them)
    spec = federated_spec(port, rounds=30, min_sites=2, round_timeout_s=20)
    folders = site_folders(spec, tmp_path / "sites", n_sites=2)
    workdir = tmp_path / "job"
    with sites_running(port, folders, tmp_path) as sites:
        thread, outcome = job_in_thread(spec, workdir)
        wait_for("round 2", lambda: len(round_records(workdir)) >= 2, timeout=120)
        sites["site-2"].send_signal(signal.SIGKILL)
        thread.join(120)
    assert not thread.is_alive()
    left = len(round_records(workdir))
    assert left < 30
    reason = outcome["failed"]
    assert reason.startswith(f"round {left + 1}: ") or reason.startswith(f"round {left + 2}: "), reason
    assert "min_sites" in reason
