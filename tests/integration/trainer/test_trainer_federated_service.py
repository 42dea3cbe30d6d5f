"""A federated job through the trainer service: submitted over REST, followed round by round in the runs
API, published as an ordinary `model.trained` whose lineage names the sites and never their data; and
cancelled like any job."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from federation_harness import federated_spec, site_folders, sites_running
from trainer_harness import serve_trainer, stored_events, trainer_settings, wait_job
from waiting import wait_for

from gallery_common.artifacts import open_store
from gallery_common.contracts import read_split
from gallery_common.events import ModelTrained
from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port
from gallery_trainer.export import onnx_outputs

ROUNDS = 6


def test_a_federated_job_is_tracked_by_round_and_published_like_any_model(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    settings = trainer_settings(tmp_path / "home", nats_server.url)
    port = free_port()
    spec = federated_spec(port, rounds=ROUNDS, min_sites=3)
    folders = site_folders(spec, tmp_path / "sites")
    with serve_trainer(settings) as client, sites_running(port, folders, tmp_path):
        submitted = client.post("/api/v1/jobs", json=spec.model_dump(mode="json"))
        assert submitted.status_code in (200, 201, 202), submitted.text
        job = wait_job(client, submitted.json()["id"], timeout=180)
        assert job["status"] == "succeeded", job
        assert job["epoch"] == job["epochs"] == ROUNDS
        run = client.get(f"/api/v1/runs/{job['run_id']}").json()
        assert run["system"]["engine"] == "federated"
        assert run["params"]["engine.kind"] == "federated" and run["params"]["engine.rounds"] == ROUNDS
        rounds = client.get(f"/api/v1/runs/{job['run_id']}/metrics").json()["epochs"]
        assert [r["epoch"] for r in rounds] == list(range(1, ROUNDS + 1))
        for record in rounds:
            assert record["sites"] == 3 and record["round_seconds"] > 0 and record["bytes_per_site"] > 0
            assert all(f"site.{name}.val_accuracy" in record for name in folders)
        assert run["metrics"]["worst_site_val_accuracy"] == rounds[-1]["worst_site_val_accuracy"]
        curves = client.get(f"/api/v1/runs/{job['run_id']}/curves.png")
        assert curves.status_code == 200 and curves.content[:4] == b"\x89PNG"

    [event] = stored_events(nats_server.url, "model.trained", 1)
    trained: ModelTrained = event.data
    federation = trained.lineage.federation
    assert federation is not None and federation.rounds == ROUNDS and federation.strategy == "fedavg"
    assert sorted(site.name for site in federation.sites) == sorted(folders)
    assert {"onnx", "weights", "spec", "train_split", "validation_split", "test_split", "curves"} <= set(
        trained.artifacts
    )
    store = open_store(settings.resolved_artifact_root, settings)
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(store.get(trained.artifacts["onnx"].uri, trained.artifacts["onnx"].sha256))
    test = read_split(store.get(trained.artifacts["test_split"].uri, trained.artifacts["test_split"].sha256))
    accuracy = float((onnx_outputs(onnx, test.x).argmax(axis=1) == test.y).mean())
    assert accuracy == pytest.approx(trained.metrics["test_accuracy"], abs=1e-6)


def test_a_cancelled_federated_job_stops_its_coordinator_and_sends_the_sites_home(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    settings = trainer_settings(tmp_path / "home", nats_server.url)
    port = free_port()
    spec = federated_spec(port, rounds=500, min_sites=2)
    folders = site_folders(spec, tmp_path / "sites", n_sites=2)
    with serve_trainer(settings) as client, sites_running(port, folders, tmp_path) as sites:
        job = client.post("/api/v1/jobs", json=spec.model_dump(mode="json")).json()
        wait_job(client, job["id"], until=("training",), timeout=120)
        wait_for("a round", lambda: client.get(f"/api/v1/jobs/{job['id']}").json()["epoch"] >= 1, timeout=120)
        assert client.post(f"/api/v1/jobs/{job['id']}/cancel").json()["cancel_requested"]
        cancelled = wait_job(client, job["id"], timeout=60)
        assert cancelled["status"] == "cancelled" and cancelled["epoch"] < 500
        # the coordinator told the sites the federation is over: they end by themselves
        assert [process.wait(30) for process in sites.values()] == [0, 0]
        workdir = str(settings.home / "trainer" / "jobs" / job["id"])
        assert not [p for p in psutil.process_iter(["cmdline"]) if workdir in " ".join(p.info["cmdline"] or [])]
