"""A federated job outlives a site killed mid-round while `min_sites` remain, and ends with the reason when
the sites it needs do not come."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from federation_harness import federated_spec, site_folders, sites_running
from waiting import wait_for

from gallery_common.contracts import read_split, write_split
from gallery_common.netutil import free_port
from gallery_trainer.pipeline import JobOutputs, TrainingFailed, run_job
from gallery_trainer.spec import JobSpec

HEAVY_REPEAT = 20  # the victim holds its rows 20 times over, so its training fills most of each round
TRAINED = "site.site-3.train_loss"


def _records(workdir: Path) -> list[dict[str, Any]]:
    path = workdir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _run_in_thread(spec: JobSpec, workdir: Path) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["outputs"] = run_job(spec, workdir)
        except TrainingFailed as exc:
            outcome["failed"] = str(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def test_a_site_killed_mid_round_leaves_the_job_to_the_others(tmp_path: Path) -> None:
    port = free_port()
    spec = federated_spec(port, rounds=5, min_sites=2)
    folders = site_folders(spec, tmp_path / "sites")
    victim = folders["site-3"] / "train.npz"
    rows = read_split(victim)
    write_split(victim, np.tile(rows.x, (HEAVY_REPEAT, 1)), np.tile(rows.y, HEAVY_REPEAT))
    workdir = tmp_path / "job"
    with sites_running(port, folders, tmp_path) as sites:
        thread, outcome = _run_in_thread(spec, workdir)
        wait_for("site-3 to train in a round", lambda: any(TRAINED in r for r in _records(workdir)), timeout=120)
        sites["site-3"].send_signal(signal.SIGKILL)
        thread.join(180)
    assert not thread.is_alive()
    assert "failed" not in outcome, outcome
    outputs: JobOutputs = outcome["outputs"]
    records = _records(workdir)
    assert [r["round"] for r in records] == list(range(1, 6))
    trained_in = [r["round"] for r in records if TRAINED in r]
    after = [r for r in records if r["round"] > trained_in[-1]]
    # rounds went on without site-3, and the round it died in counted it as failed
    assert after and all(r["sites"] == 2 and not any(k.startswith("site.site-3.") for k in r) for r in after)
    assert sum(r["sites_failed"] for r in after) >= 1
    assert outputs.federation is not None
    assert {s.name: s.rounds for s in outputs.federation.sites}["site-3"] == len(trained_in)
    assert outputs.metrics["test_accuracy"] > 0.5


def test_too_few_sites_end_the_job_with_the_reason(tmp_path: Path) -> None:
    port = free_port()
    spec = federated_spec(port, rounds=3, min_sites=3, round_timeout_s=8)
    folders = site_folders(spec, tmp_path / "sites", n_sites=2)
    with sites_running(port, folders, tmp_path) as sites:
        with pytest.raises(TrainingFailed) as failed:
            run_job(spec, tmp_path / "job")
        # no site is left waiting on a federation that gave up
        ended = [process.wait(40) for process in sites.values()]
    assert "of the 3 sites needed (min_sites) were connected within 8 s (round_timeout_s)" in str(failed.value)
    assert len(ended) == 2
