"""The trainer service end to end: real training, a real nats-server, a file:// artifact store."""

from __future__ import annotations

import asyncio
import io
import struct
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
from sqlmodel import Session
from trainer_harness import iris_spec, serve_trainer, stored_events, trainer_settings, wait_job
from typer.testing import CliRunner

from gallery_cli.main import app as cli
from gallery_common.artifacts import open_store
from gallery_common.audit import AuditRecord
from gallery_common.audit_log import AuditLog
from gallery_common.bus import EventBus
from gallery_common.db import make_engine
from gallery_common.events import ModelTrained
from gallery_common.nats_server import EmbeddedNats
from gallery_trainer.migrations import upgrade
from gallery_trainer.records import Job


def onnx_accuracy(model: bytes, split: bytes) -> float:
    import onnxruntime as ort

    data = np.load(io.BytesIO(split))
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"features": data["x"].astype(np.float32)})
    return float((logits.argmax(axis=1) == data["y"]).mean())


def test_train_track_store_and_publish_an_iris_model(
    tmp_path: Path, nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = trainer_settings(tmp_path, nats_server.url)
    spec_file = tmp_path / "iris.yaml"
    spec_file.write_text(yaml.safe_dump(iris_spec()))
    with serve_trainer(settings) as client:
        # The user's way in: `gallery train` submits, follows and prints the outcome.
        monkeypatch.setenv("GALLERY_TRAINER_URL", str(client.base_url))
        result = CliRunner().invoke(cli, ["train", str(spec_file), "--poll", "0.3"])
        assert result.exit_code == 0, result.output
        assert "succeeded: model.trained published for run" in result.output
        [job] = client.get("/api/v1/jobs").json()
        assert job["status"] == "succeeded" and job["progress"] == 1.0 and job["epoch"] == job["epochs"] == 2
        run_id = job["run_id"]
        assert run_id in result.output and "test_accuracy" in result.output

        run = client.get(f"/api/v1/runs/{run_id}").json()
        assert run["status"] == "succeeded" and run["job_id"] == job["id"]
        assert run["params"]["training.epochs"] == 2 and run["params"]["model.hidden"] == [16]
        assert run["system"]["cpu_count"] >= 1 and run["system"]["torch_version"]
        assert run["system"]["peak_rss_bytes"] > 10_000_000 and run["system"]["duration_seconds"] > 0
        assert run["system"]["engine"]

        metrics = client.get(f"/api/v1/runs/{run_id}/metrics").json()
        assert [r["epoch"] for r in metrics["epochs"]] == [1, 2]
        for key in ("train_loss", "val_loss", "val_accuracy", "lr", "samples_per_sec"):
            assert key in metrics["epochs"][-1], key
        assert metrics["steps"] and "lr" in metrics["steps"][0]

        curves = client.get(f"/api/v1/runs/{run_id}/curves.png")
        assert curves.headers["content-type"] == "image/png" and curves.content[:4] == b"\x89PNG"
        assert struct.unpack(">II", curves.content[16:24]) == (1500, 450)

        # A job whose data cannot be read fails with the reason, and its run still compares.
        missing = iris_spec(epochs=1) | {"data": {"source": "npz", "uri": "file:///nowhere/x.npz", "sha256": "0" * 64}}
        failed = wait_job(client, client.post("/api/v1/jobs", json=missing).json()["id"])
        assert failed["status"] == "failed" and failed["error"]
        diff = client.get("/api/v1/runs/compare", params={"a": run_id, "b": failed["run_id"]}).json()
        assert diff["params_differ"]["data.source"] == {"a": "builtin", "b": "npz"}
        assert diff["params_differ"]["training.epochs"] == {"a": 2, "b": 1}
        assert "model.hidden" not in diff["params_differ"]
        assert diff["metrics"]["test_accuracy"]["a"] == run["metrics"]["test_accuracy"]
        assert diff["metrics"]["test_accuracy"]["b"] is None
        assert client.get("/api/v1/runs/compare", params={"a": run_id, "b": "nope"}).status_code == 404
        shown = CliRunner().invoke(cli, ["runs", "compare", run_id, failed["run_id"]])
        assert shown.exit_code == 0 and "data.source" in shown.output and "test_accuracy" in shown.output

        log_tail = client.get(f"/api/v1/jobs/{job['id']}/logs", params={"tail": 1}).text
        assert log_tail.startswith(f"[trainer] published model.trained trained:{job['id']} with ")
        assert len(client.get(f"/api/v1/jobs/{job['id']}/logs").text.splitlines()) > 1, "the ranks' output is there"

    [event] = stored_events(nats_server.url, "model.trained", 1)
    trained: ModelTrained = event.data
    assert event.id == f"trained:{job['id']}" and trained.run_id == run_id and trained.model == "iris-mlp"
    assert trained.lineage.training_job_id == job["id"] and trained.lineage.config_hash
    assert trained.class_names == ["setosa", "versicolor", "virginica"]
    assert {"weights", "onnx", "spec", "train_split", "validation_split", "test_split", "curves"} <= set(
        trained.artifacts
    )
    store = open_store(settings.resolved_artifact_root, settings)
    for ref in trained.artifacts.values():
        assert store.key_for(ref.uri).startswith(f"runs/{run_id}/")
        store.verify(ref.uri, ref.sha256)
    onnx = store.get(trained.artifacts["onnx"].uri, trained.artifacts["onnx"].sha256)
    test_split = store.get(trained.artifacts["test_split"].uri, trained.artifacts["test_split"].sha256)
    assert onnx_accuracy(onnx, test_split) == pytest.approx(trained.metrics["test_accuracy"], abs=1e-6)


def test_a_bad_spec_is_refused_naming_every_bad_field(
    tmp_path: Path, nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = {"name": "has space", "data": {"source": "builtin", "name": "mnist"}, "training": {"epochs": -1}}
    with serve_trainer(trainer_settings(tmp_path, nats_server.url)) as client:
        monkeypatch.setenv("GALLERY_TRAINER_URL", str(client.base_url))
        spec_file = tmp_path / "bad.yaml"
        spec_file.write_text(yaml.safe_dump(bad))
        result = CliRunner().invoke(cli, ["train", str(spec_file)])
        assert result.exit_code == 1 and "422" in result.output and "training.epochs" in result.output
        refused = client.post("/api/v1/jobs", json=bad)
        assert refused.status_code == 422
        for field in ("name", "data.name", "training.epochs"):
            assert field in refused.json()["error"]
        as_yaml = client.post("/api/v1/jobs", content=yaml.safe_dump(bad), headers={"content-type": "application/yaml"})
        assert as_yaml.status_code == 422 and "training.epochs" in as_yaml.json()["error"]
        wrong_type = client.post("/api/v1/jobs", content=b"x", headers={"content-type": "text/csv"})
        assert wrong_type.status_code == 415
        assert client.get("/api/v1/jobs").json() == []
        assert client.get("/api/v1/jobs/nope").json() == {"error": "no job 'nope'"}


def test_a_running_job_can_be_cancelled(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    with serve_trainer(trainer_settings(tmp_path, nats_server.url)) as client:
        job = client.post("/api/v1/jobs", json=iris_spec(epochs=5000)).json()
        deadline = time.monotonic() + 90
        while client.get(f"/api/v1/jobs/{job['id']}").json()["epoch"] < 1:  # the ranks are training
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        assert client.post(f"/api/v1/jobs/{job['id']}/cancel").json()["cancel_requested"]
        cancelled = wait_job(client, job["id"], timeout=60)
        assert cancelled["status"] == "cancelled"
        assert cancelled["epoch"] < 5000
        workdir = str(tmp_path / "trainer" / "jobs" / job["id"])
        assert not [p for p in psutil.process_iter(["cmdline"]) if workdir in " ".join(p.info["cmdline"] or [])]
        assert client.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 409
        assert client.get(f"/api/v1/runs/{cancelled['run_id']}").json()["status"] == "cancelled"
    assert stored_events(nats_server.url, "model.trained", 1, timeout=1) == []
    # who submitted the job and who cancelled it is in the project's audit trail (the refused cancel is not)
    trail = [(r.action, r.target, r.model, r.before, r.after) for r in audit_records(nats_server.url)]
    assert trail == [
        ("job.submitted", f"job/{job['id']}", "iris-mlp", None, {"model": "iris-mlp", "epochs": 5000, "search": None}),
        (
            "job.cancelled",
            f"job/{job['id']}",
            "iris-mlp",
            {"status": "running"},
            {"status": "running", "cancel_requested": True},
        ),
    ]


def audit_records(nats_url: str, project: str = "default") -> list[AuditRecord]:
    async def read() -> list[AuditRecord]:
        async with EventBus(nats_url, "auditor") as bus:
            return await AuditLog(bus).records(project)

    return asyncio.run(read())


def test_a_job_left_running_by_a_trainer_without_a_queue_is_run_again_at_start(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    settings = trainer_settings(tmp_path, nats_server.url)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    with Session(engine) as session:  # no heartbeat, no message: what a trainer before work queues left
        spec = iris_spec() | {"training": {"epochs": 0}}  # one that ends at once, without training
        session.add(Job(id="orphan", model="iris-mlp", status="running", phase="training", spec=spec))
        session.commit()
    engine.dispose()
    with serve_trainer(settings) as client:
        job = wait_job(client, "orphan", timeout=30)
        assert job["attempts"] == 1 and job["holder"], "put back on the queue at start and taken over"
        assert job["status"] == "failed" and "training.epochs" in job["error"]
