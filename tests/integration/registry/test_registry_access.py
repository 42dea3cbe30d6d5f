"""The registry's roles against the attacks they exist for, and version provenance.

A writer registers, tags and attaches; it may not pass a version by the gate (status), remove the
version behind a protected alias, move the gate's bar or re-run the gate, and it may not claim the
id of a `model.trained` event the gate has yet to see.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient
from onnx_builders import Digits, classifier_signature, logistic_regression, store_model_artifacts

from gallery_common.artifacts import open_store
from gallery_common.events import ModelTrained, make_event
from gallery_registry.app import create_app_for
from gallery_registry.deps import RegistryCore
from gallery_registry.gate import ValidationGate
from gallery_registry.schemas import VersionStatus
from gallery_registry.settings import RegistrySettings
from gallery_registry.store import RegistryStore

WRITER, ADMIN = "writer-token", "admin-token"
EVIL = {"uri": "file:///attacker/model.onnx", "sha256": "e" * 64}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def settings(tmp_path: Path) -> RegistrySettings:
    return RegistrySettings(
        home=tmp_path,
        api_tokens=f"{WRITER}:writer,{ADMIN}:admin",  # type: ignore[arg-type]
        max_body_bytes=50_000,
    )


@pytest.fixture
def client(settings: RegistrySettings) -> Iterator[TestClient]:
    with TestClient(create_app_for(settings, with_bus=False), headers=auth(WRITER)) as test_client:
        yield test_client


def store_of(client: TestClient) -> RegistryStore:
    return client.app.state.resources.core_as(RegistryCore).store  # type: ignore[attr-defined,no-any-return]


def register(client: TestClient, name: str = "m") -> dict[str, Any]:
    client.post("/api/v1/models", json={"name": name})
    created = client.post(f"/api/v1/models/{name}/versions", json={"artifacts": {"onnx": EVIL}})
    assert created.status_code == 201, created.text
    return created.json()  # type: ignore[no-any-return]


def test_a_writer_cannot_pass_a_version_by_the_gate(client: TestClient) -> None:
    register(client)
    store_of(client).set_version_status("m", 1, VersionStatus.validating)  # the gate picked it up
    flipped = client.patch("/api/v1/models/m/versions/1", json={"status": "validated"})
    assert flipped.status_code == 403
    assert flipped.json() == {
        "error": "changing a version's status needs the admin role in project 'default'; your token has writer there"
    }
    assert client.get("/api/v1/models/m/versions/1").json()["status"] == "validating"
    # the MLflow API has no way to set a status at all: its update changes the description only
    mlflow = client.patch(
        "/api/2.0/mlflow/model-versions/update", json={"name": "m", "version": 1, "status": "validated"}
    )
    assert mlflow.status_code == 200
    assert client.get("/api/v1/models/m/versions/1").json()["status"] == "validating"


def test_a_writer_cannot_delete_the_version_behind_a_protected_alias(client: TestClient) -> None:
    register(client)
    assert client.put("/api/v1/models/m/aliases/production", json={"version": 1}, headers=auth(ADMIN)).is_success
    native = client.delete("/api/v1/models/m/versions/1")
    assert native.status_code == 403 and "admin role" in native.json()["error"]
    mlflow = client.request("DELETE", "/api/2.0/mlflow/model-versions/delete", json={"name": "m", "version": 1})
    assert mlflow.status_code == 403 and mlflow.json()["error_code"] == "PERMISSION_DENIED"
    assert client.delete("/api/v1/models/m").status_code == 403
    assert client.get("/api/v1/models/m/aliases/production").json()["version"] == 1


def test_a_writer_cannot_lower_the_bar_or_rerun_the_gate(client: TestClient) -> None:
    register(client)
    lowered = client.put("/api/v1/models/m/validation-policy", json={"min_metrics": {"accuracy": 0.0}})
    assert lowered.status_code == 403
    assert client.get("/api/v1/models/m/validation-policy").json()["min_metrics"] == {"accuracy": 0.7}
    rerun = client.post("/api/v1/models/m/versions/1/validate")
    assert rerun.status_code == 403 and "admin role" in rerun.json()["error"]


def test_mlflow_refusals_before_the_body_keep_mlflows_shape(client: TestClient) -> None:
    register(client)
    anonymous = client.get("/api/2.0/mlflow/registered-models/get", params={"name": "m"}, headers={"Authorization": ""})
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
    assert anonymous.json()["error_code"] == "UNAUTHENTICATED"
    huge = client.post("/api/2.0/mlflow/model-versions/create", json={"name": "m", "description": "x" * 60_000})
    assert huge.status_code == 413
    assert huge.json() == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "the request body is over this service's limit of 50000 bytes (GALLERY_MAX_BODY_BYTES)",
    }


def test_a_pre_registered_version_cannot_hijack_a_later_model_trained(
    client: TestClient, settings: RegistrySettings, tmp_path: Path
) -> None:
    # the trainer's event ids are predictable: trained:<run id>
    event_id = "trained:run-42"
    client.post("/api/v1/models", json={"name": "digits"})
    claimed = client.post(
        "/api/v1/models/digits/versions", json={"source_event_id": event_id, "artifacts": {"onnx": EVIL}}
    )
    assert claimed.status_code == 422
    assert claimed.json() == {
        "error": "source_event_id: set only by the validation gate from a model.trained event; leave it out"
    }
    # the MLflow API has no such field; one sent anyway is ignored
    mlflow = client.post(
        "/api/2.0/mlflow/model-versions/create",
        json={"name": "digits", "source": EVIL["uri"], "run_id": "run-42", "source_event_id": event_id},
    )
    assert mlflow.status_code == 200
    planted = client.get("/api/v1/models/digits/versions/1").json()
    assert planted["source_event_id"] is None

    data = Digits.load()
    artifacts = open_store(settings.resolved_artifact_root, settings)
    trained = store_model_artifacts(artifacts, "runs/run-42", logistic_regression(data, 4).onnx, data, tmp_path)
    payload = ModelTrained(
        model="digits",
        run_id="run-42",
        artifacts=trained,
        class_names=data.class_names,
        signature=classifier_signature(data.n_features, 10),
    )
    gate = ValidationGate(store_of(client), artifacts)
    outcome = await_outcome(gate, make_event(payload, "/modelgallery/trainer", event_id=event_id))

    # the gate registered the trainer's model as a version of its own and judged that one
    assert outcome.version.version == 2 and outcome.version.source_event_id == event_id
    assert outcome.version.status == VersionStatus.validated
    assert outcome.version.artifacts["onnx"].sha256 == trained["onnx"].sha256
    untouched = client.get("/api/v1/models/digits/versions/1").json()
    assert (untouched["status"], untouched["source"]) == ("pending", EVIL["uri"])


def await_outcome(gate: ValidationGate, event: Any) -> Any:
    """The gate's `on_trained` as its consumer runs it (the app's own loop is TestClient's)."""

    async def handle() -> Any:
        return await gate.on_trained(event)

    outcome = anyio.run(handle)
    assert outcome is not None, "the gate took the event as already handled"
    return outcome
