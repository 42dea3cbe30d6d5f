"""Secure aggregation (Flower's SecAgg+) in a federated job: the sites mask their weights, the coordinator
unmasks only their sum, and the model comes out as good as with plain FedAvg."""

from __future__ import annotations

import json
from pathlib import Path

from federation_harness import federated_spec, site_folders, sites_running

from gallery_common.netutil import free_port
from gallery_trainer.pipeline import JobOutputs, run_job

ROUNDS = 12


def _train(tmp_path: Path, name: str, **engine: object) -> tuple[JobOutputs, list[dict[str, float]]]:
    port = free_port()
    # a larger test split than the other tests': one point is then 5 rows, not 3, and two runs of the same
    # protocol differ by a row or two (float rounding, then masking's quantisation, grow through training)
    spec = federated_spec(port, test_share=0.3, rounds=ROUNDS, min_sites=3, **engine)
    folders = site_folders(spec, tmp_path / name / "sites")
    with sites_running(port, folders, tmp_path / name / "sites"):
        outputs = run_job(spec, tmp_path / name / "job")
    records = [json.loads(line) for line in (tmp_path / name / "job" / "metrics.jsonl").read_text().splitlines()]
    return outputs, records


def test_secure_aggregation_trains_the_same_model_as_plain_fedavg(tmp_path: Path) -> None:
    plain, _ = _train(tmp_path, "plain")
    secure, records = _train(tmp_path, "secure", secure_aggregation={"reconstruction_threshold": 0.67})
    assert secure.federation is not None and secure.federation.secure_aggregation
    assert plain.federation is not None and not plain.federation.secure_aggregation
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1))
    for record in records:
        assert record["sites"] == 3 and all(f"site.site-{k}.train_loss" in record for k in (1, 2, 3))
    # masking adds the protocol's key exchange and shares to every round, and costs no accuracy
    assert secure.metrics["bytes_per_site_per_round"] > plain.metrics["bytes_per_site_per_round"]
    assert abs(secure.metrics["test_accuracy"] - plain.metrics["test_accuracy"]) <= 0.01
    print(
        f"\nSecAgg+ vs FedAvg: test accuracy {secure.metrics['test_accuracy']:.3f} vs "
        f"{plain.metrics['test_accuracy']:.3f}; per round {secure.metrics['round_seconds']:.2f} vs "
        f"{plain.metrics['round_seconds']:.2f} s, {secure.metrics['bytes_per_site_per_round']:.0f} vs "
        f"{plain.metrics['bytes_per_site_per_round']:.0f} bytes per site"
    )
