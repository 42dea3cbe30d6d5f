"""A federated job outlives a site killed mid-round while `min_sites` remain, and takes the site back when
it returns."""

from __future__ import annotations

import signal
from pathlib import Path

from federation_harness import (
    federated_spec,
    job_with_site_in_a_round,
    make_heavy,
    round_records,
    site_folders,
    sites_running,
    start_site,
)
from waiting import wait_for

from gallery_common.netutil import free_port
from gallery_trainer.pipeline import JobOutputs

HEAVY_REPEAT = 6
TRAINED = "site.site-3.train_loss"
ROUNDS = 16


def test_a_site_killed_mid_round_leaves_the_job_to_the_others_until_it_comes_back(tmp_path: Path) -> None:
    port = free_port()
    spec = federated_spec(port, rounds=ROUNDS, min_sites=2)
    folders = site_folders(spec, tmp_path / "sites")
    make_heavy(folders["site-3"], HEAVY_REPEAT)
    workdir = tmp_path / "job"
    with sites_running(port, folders, tmp_path) as sites:
        thread, outcome = job_with_site_in_a_round(spec, workdir, sites, port, "site-3")
        sites["site-3"].send_signal(signal.SIGKILL)
        sites["site-3"].wait(10)
        rounds_before = len(round_records(workdir))
        # back at once: starting (torch, its rows) takes it several rounds of the other two
        sites["site-3 again"] = start_site(port, "site-3", folders["site-3"], tmp_path)
        wait_for("two rounds without site-3", lambda: len(round_records(workdir)) >= rounds_before + 2, timeout=120)
        # on a loaded machine its start may outlast the job's rounds: the other two wait (stopped) until it runs
        healthy = [sites["site-1"], sites["site-2"]]
        for process in healthy:
            process.send_signal(signal.SIGSTOP)
        try:
            log = tmp_path / "site-3.log"
            wait_for("site-3 to start again", lambda: log.read_text().count("site started") >= 2, timeout=120)
        finally:
            for process in healthy:
                process.send_signal(signal.SIGCONT)
        thread.join(180)
    assert not thread.is_alive()
    assert "failed" not in outcome, outcome
    outputs: JobOutputs = outcome["outputs"]
    records = round_records(workdir)
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
