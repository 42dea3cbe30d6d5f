"""The validation loop: a rejected trial makes the trainer train the next one, within the budget."""

from __future__ import annotations

import time
from pathlib import Path

from trainer_harness import iris_spec, publish, serve_trainer, stored_events, trainer_settings, wait_job

from gallery_common.events import ModelRejected
from gallery_common.nats_server import EmbeddedNats


def test_rejections_drive_the_search_until_the_budget_is_spent(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    spec = iris_spec("iris-search", epochs=1) | {
        "search": {
            "budget": 2,
            "space": {"training.learning_rate": {"type": "float", "low": 0.001, "high": 0.1, "log": True}},
        }
    }
    with serve_trainer(trainer_settings(tmp_path, nats_server.url)) as client:
        first = client.post("/api/v1/jobs", json=spec).json()
        assert first["trial"] == 0 and first["search_id"]
        search_id = first["search_id"]
        first = wait_job(client, first["id"])
        assert first["status"] == "succeeded", first["error"]

        rejection = ModelRejected(model="iris-search", version=1, run_id=first["run_id"], reasons=["too weak"])
        publish(nats_server.url, rejection)
        publish(nats_server.url, rejection)  # a redelivery: it must not start a third trial

        def trials() -> list[dict]:  # type: ignore[type-arg]
            return client.get(f"/api/v1/searches/{search_id}").json()["trials"]

        deadline = time.monotonic() + 20
        while len(trials()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [t["state"] for t in trials()] == ["rejected", "training"]
        second = wait_job(client, trials()[1]["job_id"])
        assert second["status"] == "succeeded" and second["trial"] == 1
        assert trials()[1]["params"] != trials()[0]["params"]

        publish(nats_server.url, ModelRejected(model="iris-search", version=2, run_id=second["run_id"], reasons=["x"]))
        deadline = time.monotonic() + 20
        while client.get(f"/api/v1/searches/{search_id}").json()["status"] == "running":
            assert time.monotonic() < deadline, "the search did not end"
            time.sleep(0.2)
        search = client.get(f"/api/v1/searches/{search_id}").json()
        assert search["status"] == "exhausted"
        assert [t["state"] for t in search["trials"]] == ["rejected", "rejected"]
        assert len(client.get("/api/v1/jobs", params={"model": "iris-search"}).json()) == 2
    trained = stored_events(nats_server.url, "model.trained", 3, timeout=3)
    assert sorted(e.data.run_id for e in trained) == sorted([first["run_id"], second["run_id"]])
