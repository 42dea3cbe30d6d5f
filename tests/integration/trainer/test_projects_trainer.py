"""Projects in the trainer: a job, its run and its model.trained belong to the project it was submitted
into; a caller sees and touches only the jobs of projects it holds a role in, and a hidden job answers
exactly as a missing one. Real trainer app (uvicorn), real nats-server, real training."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
from trainer_harness import iris_spec, serve_trainer, trainer_settings, wait_job

from gallery_common.bus import EventBus
from gallery_common.events import CloudEvent, ModelTrained
from gallery_common.nats_server import EmbeddedNats
from gallery_common.projects import ProjectRecord

TOKENS = "root:admin,a:alpha:writer,ar:alpha:reader,b:beta:writer,mix:alpha:reader,mix:beta:writer"


def as_(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def trained_events(nats_url: str, count: int, timeout: float = 20) -> list[CloudEvent[Any]]:
    """The model.trained events stored in the stream, once `count` are there (or the timeout passes)."""

    async def stored() -> list[CloudEvent[Any]]:
        async with EventBus(nats_url, "test") as bus:
            return [e for e in await bus.stored_events() if isinstance(e.data, ModelTrained)]

    deadline = time.monotonic() + timeout
    events = asyncio.run(stored())
    while len(events) < count and time.monotonic() < deadline:
        time.sleep(0.2)
        events = asyncio.run(stored())
    return events


def test_jobs_runs_and_model_trained_belong_to_the_project_they_were_submitted_into(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    plain = trainer_settings(tmp_path, nats_server.url)
    settings = type(plain)(
        home=plain.home, nats_url=plain.nats_url, port=plain.port, progress_interval=0.2, api_tokens=TOKENS
    )
    for name in ("alpha", "beta"):
        settings.project_directory().put(ProjectRecord.new(name, f"team {name}", "test", {}))
    with serve_trainer(settings) as client:
        # a member of alpha cannot submit into beta, nor into a project that does not exist: the same 404
        hidden = client.post("/api/v1/jobs", json={**iris_spec(), "project": "beta"}, headers=as_("a"))
        missing = client.post("/api/v1/jobs", json={**iris_spec(), "project": "gamma"}, headers=as_("a"))
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json()["error"] == "project 'beta' not found"
        assert missing.json()["error"] == "project 'gamma' not found"
        # a reader of alpha cannot submit there
        refused = client.post("/api/v1/jobs", json={**iris_spec(), "project": "alpha"}, headers=as_("ar"))
        assert refused.status_code == 403 and "needs the writer role" in refused.json()["error"]
        assert client.get("/api/v1/jobs", headers=as_("root")).json() == []

        # a project token that names none submits into its one project
        submitted = client.post("/api/v1/jobs", json=iris_spec("iris-alpha"), headers=as_("a"))
        assert submitted.status_code == 202, submitted.text
        job = submitted.json()
        assert job["project"] == "alpha"
        auth = httpx.Client(base_url=str(client.base_url), headers=as_("a"), timeout=30)
        with auth:
            done = wait_job(auth, job["id"])
        assert done["status"] == "succeeded", done
        [event] = trained_events(nats_server.url, 1)
        assert event.data.model == "iris-alpha" and event.data.project == "alpha"

        # beta's member cannot list, read, cancel or read the log or run of alpha's job
        assert client.get("/api/v1/jobs", headers=as_("b")).json() == []
        assert client.get("/api/v1/runs", headers=as_("b")).json() == []
        listed = client.get("/api/v1/jobs", params={"project": "alpha"}, headers=as_("b"))
        assert listed.status_code == 404 and listed.json()["error"] == "project 'alpha' not found"
        unknown = client.get("/api/v1/jobs/no-such-job", headers=as_("b")).json()["error"]
        for method, path in (
            ("GET", f"/api/v1/jobs/{job['id']}"),
            ("GET", f"/api/v1/jobs/{job['id']}/logs"),
            ("POST", f"/api/v1/jobs/{job['id']}/cancel"),
        ):
            answer = client.request(method, path, headers=as_("b"))
            assert answer.status_code == 404, (path, answer.text)
            assert answer.json()["error"].replace(job["id"], "X") == unknown.replace("no-such-job", "X")
        run_id = done["run_id"]
        assert client.get(f"/api/v1/runs/{run_id}", headers=as_("b")).json() == {"error": f"no run {run_id!r}"}
        assert client.get(f"/api/v1/runs/{run_id}/metrics", headers=as_("b")).status_code == 404

        # alpha's reader reads its project's job and run, but cannot cancel
        assert client.get(f"/api/v1/jobs/{job['id']}", headers=as_("ar")).json()["project"] == "alpha"
        assert client.get(f"/api/v1/runs/{run_id}", headers=as_("ar")).json()["project"] == "alpha"
        cancel = client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=as_("ar"))
        assert cancel.status_code == 403 and "writer role" in cancel.json()["error"]
        assert [j["id"] for j in client.get("/api/v1/jobs", headers=as_("ar")).json()] == [job["id"]]
        # a writer elsewhere who only reads alpha: refused in alpha, naming the role and the project
        for method, path, body in (
            ("POST", "/api/v1/jobs", {**iris_spec(), "project": "alpha"}),
            ("POST", f"/api/v1/jobs/{job['id']}/cancel", None),
        ):
            answer = client.request(method, path, json=body, headers=as_("mix"))
            assert answer.status_code == 403, answer.text
            assert "needs the writer role in project 'alpha'; your token has reader there" in answer.json()["error"]

        # an installation-wide token works as before: no project named means `default`; it sees all
        wide = client.post("/api/v1/jobs", json=iris_spec("iris-default", epochs=50), headers=as_("root")).json()
        assert wide["project"] == "default"
        assert client.post(f"/api/v1/jobs/{wide['id']}/cancel", headers=as_("root")).status_code == 200
        listed_all = client.get("/api/v1/jobs", headers=as_("root")).json()
        assert {(j["model"], j["project"]) for j in listed_all} == {
            ("iris-alpha", "alpha"),
            ("iris-default", "default"),
        }
        only_alpha = client.get("/api/v1/jobs", params={"project": "alpha"}, headers=as_("root")).json()
        assert [j["id"] for j in only_alpha] == [job["id"]]
        # the X-Gallery-Project header names the project of a spec that names none
        headed = client.post(
            "/api/v1/jobs",
            json=iris_spec("iris-headed", epochs=50),
            headers={**as_("root"), "X-Gallery-Project": "beta"},
        ).json()
        assert headed["project"] == "beta"
        assert client.post(f"/api/v1/jobs/{headed['id']}/cancel", headers=as_("b")).status_code == 200

        # a search belongs to its project too: alpha's, hidden from beta as an unknown search
        search_spec = iris_spec("iris-search", epochs=50) | {
            "project": "alpha",
            "search": {"budget": 1, "space": {"training.learning_rate": {"type": "float", "low": 0.01, "high": 0.1}}},
        }
        trial = client.post("/api/v1/jobs", json=search_spec, headers=as_("a")).json()
        assert trial["project"] == "alpha" and trial["search_id"]
        assert client.post(f"/api/v1/jobs/{trial['id']}/cancel", headers=as_("a")).status_code == 200
        search = client.get(f"/api/v1/searches/{trial['search_id']}", headers=as_("ar")).json()
        assert search["project"] == "alpha"
        hidden_search = client.get(f"/api/v1/searches/{trial['search_id']}", headers=as_("b"))
        unknown_search = client.get("/api/v1/searches/no-such-search", headers=as_("b"))
        assert hidden_search.status_code == unknown_search.status_code == 404
        assert hidden_search.json()["error"].replace(trial["search_id"], "X") == unknown_search.json()["error"].replace(
            "no-such-search", "X"
        )

        # alpha's member does not see default's job
        assert {j["model"] for j in client.get("/api/v1/jobs", headers=as_("a")).json()} == {
            "iris-alpha",
            "iris-search",
        }
