"""The REST API over a real app (SQLite, file store) with fakes of the registry and the library."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient
from local_work_queue import LocalQueue
from optimizer_service_fakes import FakePipeline, RecordingPublisher, put_version_artifacts
from registry_fakes import InMemoryRegistry

from gallery_common.app import ServiceResources, create_app
from gallery_optimizer import routes
from gallery_optimizer.job_store import JobStore
from gallery_optimizer.migrations import upgrade
from gallery_optimizer.routes import OptimizerCore
from gallery_optimizer.runner import OptimizationRunner
from gallery_optimizer.settings import OptimizerSettings


@pytest.fixture
def registry() -> InMemoryRegistry:
    return InMemoryRegistry()


@pytest.fixture
def client(tmp_path: Path, registry: InMemoryRegistry) -> Iterator[TestClient]:
    settings = OptimizerSettings(home=tmp_path, api_tokens="a:admin,w:writer,r:reader")  # type: ignore[arg-type]

    async def startup(resources: ServiceResources, stack: AsyncExitStack) -> OptimizerCore:
        assert resources.engine is not None and resources.store is not None
        await anyio.to_thread.run_sync(upgrade, resources.engine)
        jobs = JobStore(resources.engine)
        runner = OptimizationRunner(
            jobs=jobs,
            store=resources.store,
            registry=registry,  # type: ignore[arg-type]
            publish=RecordingPublisher(),
            work_dir=settings.resolved_work_dir,
            progress_interval=0.0,
            pipeline=FakePipeline().factory(),
        )
        queue = LocalQueue()
        queue.start(runner)
        stack.push_async_callback(partial(anyio.to_thread.run_sync, queue.stop, runner))
        return OptimizerCore(jobs, runner, queue)  # type: ignore[arg-type]

    app = create_app(
        settings,
        title="optimizer under test",
        routers=[routes.router],
        use_bus=False,
        use_store=True,
        use_database=True,
        startup=startup,
    )
    with TestClient(app, headers={"Authorization": "Bearer w"}) as test_client:
        yield test_client


def _register(client: TestClient, registry: InMemoryRegistry, model: str = "iris", version: int = 1) -> None:
    store = client.app.state.resources.store  # type: ignore[attr-defined]
    registry.add_version(model, version, put_version_artifacts(store, model, version))


def _wait(client: TestClient, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/optimize/{job_id}").json()
        if job["status"] in ("succeeded", "failed"):
            return job  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


ADMIN = {"Authorization": "Bearer a"}


def test_a_policy_has_defaults_and_can_be_set(client: TestClient) -> None:
    default = client.get("/api/v1/policies/iris")
    assert default.status_code == 200
    assert default.json()["accuracy_budget"] == 0.01 and "int8_dynamic" in default.json()["variants"]
    put = client.put("/api/v1/policies/iris", json={"accuracy_budget": 0.03, "variants": ["fp16"]}, headers=ADMIN)
    assert put.status_code == 200
    assert client.get("/api/v1/policies/iris").json()["variants"] == ["fp16"]


def test_a_bad_policy_is_422_naming_the_field(client: TestClient) -> None:
    response = client.put("/api/v1/policies/iris", json={"target_sparsity": 1.5}, headers=ADMIN)
    assert response.status_code == 422
    assert response.json()["error"].startswith("invalid optimization policy: target_sparsity:")
    assert client.put("/api/v1/policies/bad%20name", json={}, headers=ADMIN).status_code == 422


def test_only_an_admin_sets_a_policy(client: TestClient) -> None:
    response = client.put("/api/v1/policies/iris", json={}, headers={"Authorization": "Bearer r"})
    assert response.status_code == 403
    # the policy decides which variant is recommended (and deployed): a writer may not set it
    by_writer = client.put("/api/v1/policies/iris", json={"accuracy_budget": 1.0})
    assert by_writer.status_code == 403 and "admin role" in by_writer.json()["error"]
    assert client.get("/api/v1/policies/iris").json()["accuracy_budget"] == 0.01


def test_optimize_by_hand_runs_a_job_and_serves_its_report(client: TestClient, registry: InMemoryRegistry) -> None:
    _register(client, registry)
    client.put("/api/v1/policies/iris", json={"variants": ["int8_dynamic", "fp16"]}, headers=ADMIN)
    job_request = {"model": "iris", "version": 1, "policy": {"accuracy_budget": 0.02}}
    # overriding the policy for one job is setting a policy: admin; a writer submits under the model's
    by_writer = client.post("/api/v1/optimize", json=job_request)
    assert by_writer.status_code == 403 and "overriding the optimization policy" in by_writer.json()["error"]
    response = client.post("/api/v1/optimize", json=job_request, headers=ADMIN)
    assert response.status_code == 202
    queued = response.json()
    assert queued["status"] in ("queued", "running")
    assert queued["policy"]["variants"] == ["int8_dynamic", "fp16"] and queued["policy"]["accuracy_budget"] == 0.02

    job = _wait(client, queued["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["recommended"] == "int8_dynamic"
    assert [v["name"] for v in job["report"]["variants"]] == ["fp32", "int8_dynamic", "fp16"]
    markdown = client.get(f"/api/v1/optimize/{job['id']}/report.md")
    assert markdown.status_code == 200 and markdown.headers["content-type"].startswith("text/markdown")
    assert "| int8_dynamic ★ |" in markdown.text
    assert {role for _, _, role, _ in registry.attached} == {"int8", "fp16", "edge_bundle", "report"}

    again = client.post("/api/v1/optimize", json={"model": "iris", "version": 1})
    assert again.status_code == 409
    assert (
        again.json()["error"]
        == f"iris:1 was already optimized by job {job['id']}; its variants are attached to the version"
    )


def test_optimizing_an_unknown_version_is_404(client: TestClient) -> None:
    response = client.post("/api/v1/optimize", json={"model": "iris", "version": 7})
    assert response.status_code == 404
    assert "iris:7 not found" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "iris", "version": 0}, "version: Input should be greater than or equal to 1"),
        ({"model": "iris"}, "version: Field required"),
        ({"model": "iris", "version": 1, "policy": {"accuracy_budget": -1}}, "accuracy_budget"),
    ],
)
def test_a_bad_optimize_request_is_422(
    client: TestClient, registry: InMemoryRegistry, body: dict[str, Any], message: str
) -> None:
    _register(client, registry)
    response = client.post("/api/v1/optimize", json=body, headers=ADMIN)
    assert response.status_code == 422
    assert message in response.json()["error"]


def test_an_unknown_job_is_404_and_an_unfinished_report_too(client: TestClient) -> None:
    assert client.get("/api/v1/optimize/nope").status_code == 404
    assert client.get("/api/v1/optimize/nope").json()["error"] == "optimization job 'nope' not found"
    assert client.get("/api/v1/optimize/nope/report.md").status_code == 404


def test_a_version_without_its_splits_is_refused_before_a_job_exists(
    client: TestClient, registry: InMemoryRegistry
) -> None:
    _register(client, registry)
    registry.detach("iris", 1, "validation_split")
    response = client.post("/api/v1/optimize", json={"model": "iris", "version": 1})
    assert response.status_code == 422
    assert response.json()["error"] == "iris:1 cannot be optimized: it has no validation_split artifact"
    assert client.get("/api/v1/optimize").json() == []
