"""A federated job whose `min_sites` do not come within `round_timeout_s` ends with that reason, and no
site is left waiting on it."""

from __future__ import annotations

from pathlib import Path

import pytest
from federation_harness import federated_spec, site_folders, sites_running

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
    assert "of the 3 sites needed (min_sites) were connected within 8 s (round_timeout_s)" in str(failed.value)
    assert len(ended) == 2
