"""A federated job outlives a site killed mid-round while `min_sites` remain, and takes the site back when
it returns."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
from federation_harness import federated_spec, site_folders, sites_running, start_site
from waiting import wait_for

from gallery_common.contracts import read_split, write_split
from gallery_common.netutil import free_port
from gallery_trainer.pipeline import JobOutputs, TrainingFailed, run_job
from gallery_trainer.spec import JobSpec

HEAVY_REPEAT = 10  # the victim holds its rows 10 times over, so its training fills most of each round
TRAINED = "site.site-3.train_loss"
ROUNDS = 10


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


def test_a_site_killed_mid_round_leaves_the_job_to_the_others_until_it_comes_back(tmp_path: Path) -> None:
    port = free_port()
    spec = federated_spec(port, rounds=ROUNDS, min_sites=2)
    folders = site_folders(spec, tmp_path / "sites")
    victim = folders["site-3"] / "train.npz"
    rows = read_split(victim)
    write_split(victim, np.tile(rows.x, (HEAVY_REPEAT, 1)), np.tile(rows.y, HEAVY_REPEAT))
    workdir = tmp_path / "job"
    with sites_running(port, folders, tmp_path) as sites:
        thread, outcome = _run_in_thread(spec, workdir)
        wait_for("site-3 to train in a round", lambda: any(TRAINED in r for r in _records(workdir)), timeout=120)
        sites["site-3"].send_signal(signal.SIGKILL)
        sites["site-3"].wait(10)
        # back at once: starting (torch, its rows) takes it several rounds of the other two
        sites["site-3 again"] = start_site(port, "site-3", folders["site-3"], tmp_path)
        thread.join(180)
    assert not thread.is_alive()
    assert "failed" not in outcome, outcome
    outputs: JobOutputs = outcome["outputs"]
    records = _records(workdir)
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1))
    trained = [TRAINED in r for r in records]
    first_gap = trained.index(False, trained.index(True))
    back = trained.index(True, first_gap)
    gap = records[first_gap:back]
    # rounds went on without site-3, the round it died in counted it as failed, and it trained again once back
    assert gap and all(r["sites"] == 2 for r in gap[1:])
    assert sum(r["sites_failed"] for r in gap) >= 1
    assert outputs.federation is not None
    assert {s.name: s.rounds for s in outputs.federation.sites}["site-3"] == sum(trained)
    assert outputs.metrics["test_accuracy"] > 0.5
