"""Differential privacy in a federated job: Flower clips every site's update and adds Gaussian noise to
their average, and the run, the metrics and the model's lineage report the budget epsilon at delta."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from federation_harness import federated_spec, site_folders, sites_running

from gallery_common.netutil import free_port
from gallery_trainer.federated.privacy import gaussian_epsilon
from gallery_trainer.pipeline import run_job

ROUNDS = 4


def test_a_private_run_reports_its_epsilon(tmp_path: Path) -> None:
    port = free_port()
    dp = {"noise_multiplier": 1.0, "clipping_norm": 1.0, "delta": 1e-5}
    spec = federated_spec(port, rounds=ROUNDS, min_sites=3, differential_privacy=dp)
    folders = site_folders(spec, tmp_path / "sites")
    with sites_running(port, folders, tmp_path):
        outputs = run_job(spec, tmp_path / "job")
    records = [json.loads(line) for line in (tmp_path / "job" / "metrics.jsonl").read_text().splitlines()]
    spent = [r["dp_epsilon"] for r in records]
    assert spent == pytest.approx([gaussian_epsilon(1.0, n, 1e-5) for n in range(1, ROUNDS + 1)])
    assert outputs.metrics["dp_epsilon"] == pytest.approx(spent[-1]) and outputs.metrics["dp_delta"] == 1e-5
    assert outputs.federation is not None and outputs.federation.privacy is not None
    privacy = outputs.federation.privacy
    assert (privacy.noise_multiplier, privacy.clipping_norm, privacy.delta) == (1.0, 1.0, 1e-5)
    assert privacy.epsilon == pytest.approx(spent[-1])
    stored = json.loads(outputs.files["spec"].read_text())
    assert stored["federation"]["privacy"]["epsilon"] == pytest.approx(spent[-1])
    print(
        f"\nDP run: epsilon {spent[-1]:.2f} at delta 1e-5 after {ROUNDS} rounds, "
        f"test accuracy {outputs.metrics['test_accuracy']:.3f}"
    )
