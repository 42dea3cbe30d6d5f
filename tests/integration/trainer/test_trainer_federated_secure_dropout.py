"""Secure aggregation survives a site killed mid-round: SecAgg+ unmasks the others' sum from the shares the
sites exchanged, and the job goes on while `min_sites` remain."""

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
)

from gallery_common.netutil import free_port

ROUNDS = 6
TRAINED = "site.site-3.train_loss"


def test_a_site_killed_during_secure_aggregation_leaves_the_others_a_round(tmp_path: Path) -> None:
    port = free_port()
    spec = federated_spec(port, rounds=ROUNDS, min_sites=2, secure_aggregation={"reconstruction_threshold": 0.67})
    folders = site_folders(spec, tmp_path / "sites")
    make_heavy(folders["site-3"], 10)
    workdir = tmp_path / "job"
    with sites_running(port, folders, tmp_path) as sites:
        thread, outcome = job_with_site_in_a_round(spec, workdir, sites, port, "site-3")
        sites["site-3"].send_signal(signal.SIGKILL)
        thread.join(180)
    assert not thread.is_alive()
    assert "failed" not in outcome, outcome
    records = round_records(workdir)
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1))
    last = max(r["round"] for r in records if TRAINED in r)
    after = [r for r in records if r["round"] > last]
    assert after and all(r["sites"] == 2 for r in after)
    assert sum(r["sites_failed"] for r in after) >= 1
    assert outcome["outputs"].federation.secure_aggregation
    assert outcome["outputs"].metrics["test_accuracy"] > 0.5
