"""Projects in the registry, through its REST, MLflow, catalogue, audit and projects APIs on a real
nats-server (the projects bucket and the audit trail live there).

Team A's members cannot list, read or change team B's models, and a model they cannot see answers
exactly as one that does not exist; a reader cannot write; a protected alias needs an admin of the
model's project; members granted through the API hold their role from the next request on, and
every grant is in the project's audit trail; installation-wide tokens work as before, in `default`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import pytest
from fastapi.testclient import TestClient

from gallery_common.artifacts import open_store
from gallery_common.errors import InvalidRequest
from gallery_common.events import ArtifactRef, ModelTrained, make_event
from gallery_common.nats_server import EmbeddedNats
from gallery_registry.app import create_app_for
from gallery_registry.deps import RegistryCore
from gallery_registry.gate import ValidationGate
from gallery_registry.settings import RegistrySettings

ADMIN = "admin-token"  # installation-wide admin: every project
A_ADMIN, A_WRITER, A_READER = "a-admin-token", "a-writer-token", "a-reader-token"
B_ADMIN = "b-admin-token"
JOINER = "joiner-token"  # a reader of team-b only, until team-a's admin makes it a member
TOKENS = (
    f"{ADMIN}:admin,{A_ADMIN}:team-a:admin,{A_WRITER}:team-a:writer,{A_READER}:team-a:reader,"
    f"{B_ADMIN}:team-b:admin,{JOINER}:team-b:reader"
)
ONNX = {"uri": "file:///models/m.onnx", "sha256": "a" * 64}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def principal(token: str) -> str:
    """The caller name a static token with project grants has: what a member list holds."""
    return f"token-{hashlib.sha256(token.encode()).hexdigest()[:8]}"


@pytest.fixture
def registry(nats_server: EmbeddedNats, tmp_path: Path) -> Iterator[TestClient]:
    settings = RegistrySettings(
        home=tmp_path,
        nats_url=nats_server.url,
        api_tokens=TOKENS,  # type: ignore[arg-type]
        protected_aliases="production",  # type: ignore[arg-type]
    )
    with TestClient(create_app_for(settings), headers=auth(ADMIN)) as client:
        for name in ("team-a", "team-b"):
            created = client.post("/api/v1/projects", json={"name": name, "description": f"the {name} models"})
            assert created.status_code == 201, created.text
        # each team's model, created by a member that names no project: it lands in its one project
        a_model = client.post("/api/v1/models", json={"name": "a-model"}, headers=auth(A_WRITER))
        assert a_model.status_code == 201 and a_model.json()["project"] == "team-a", a_model.text
        b_model = client.post("/api/v1/models", json={"name": "b-model"}, headers=auth(B_ADMIN))
        assert b_model.status_code == 201 and b_model.json()["project"] == "team-b", b_model.text
        for name, token, project in (("a-model", A_WRITER, "team-a"), ("b-model", B_ADMIN, "team-b")):
            version = client.post(
                f"/api/v1/models/{name}/versions", json={"artifacts": {"onnx": ONNX}}, headers=auth(token)
            )
            assert version.status_code == 201 and version.json()["project"] == project, version.text
        yield client


def not_found_alike(hidden: Any, missing: Any, hidden_name: str, missing_name: str) -> None:
    """The answer for what the caller cannot see is the answer for what does not exist, name for name."""
    assert hidden.status_code == missing.status_code == 404
    assert hidden.text.replace(hidden_name, "X") == missing.text.replace(missing_name, "X")


def test_a_member_of_one_project_cannot_list_read_or_change_anothers_models(registry: TestClient) -> None:
    a = auth(A_WRITER)
    listed = registry.get("/api/v1/models", headers=a).json()["models"]
    assert [(m["name"], m["project"]) for m in listed] == [("a-model", "team-a")]
    assert [m["name"] for m in registry.get("/api/v1/models").json()["models"]] == ["a-model", "b-model"]

    for path in (
        "",
        "/versions",
        "/versions/1",
        "/versions/7",
        "/aliases",
        "/aliases/staging",
        "/validation-policy",
        "/card",
    ):
        not_found_alike(
            registry.get(f"/api/v1/models/b-model{path}", headers=a),
            registry.get(f"/api/v1/models/no-model{path}", headers=a),
            "b-model",
            "no-model",
        )
    assert registry.get("/api/v1/models/b-model/versions/1", headers=a).json() == {"error": "model 'b-model' not found"}
    # writes answer the same: nothing about team B's model leaks, and nothing changes
    not_found_alike(
        registry.patch("/api/v1/models/b-model", json={"description": "mine"}, headers=a),
        registry.patch("/api/v1/models/no-model", json={"description": "mine"}, headers=a),
        "b-model",
        "no-model",
    )
    moved = registry.put("/api/v1/models/b-model/aliases/staging", json={"version": 1}, headers=a)
    assert moved.status_code == 404
    posted = registry.post("/api/v1/models/b-model/versions", json={}, headers=a)
    assert posted.status_code == 404
    b_model = registry.get("/api/v1/models/b-model", headers=auth(B_ADMIN)).json()
    assert (b_model["description"], b_model["aliases"], b_model["latest_version"]) == (None, {}, 1)

    # a project named outright: hidden and unknown answer alike
    not_found_alike(
        registry.get("/api/v1/models", params={"project": "team-b"}, headers=a),
        registry.get("/api/v1/models", params={"project": "no-team"}, headers=a),
        "team-b",
        "no-team",
    )
    assert registry.get("/api/v1/models", params={"project": "team-b"}, headers=a).json() == {
        "error": "project 'team-b' not found"
    }
    refused = registry.post("/api/v1/models", json={"name": "sneaky", "project": "team-b"}, headers=a)
    assert refused.status_code == 404 and refused.json() == {"error": "project 'team-b' not found"}
    taken = registry.post("/api/v1/models", json={"name": "b-model"}, headers=a)
    assert taken.status_code == 409  # names are unique across the installation (the documented trade-off)

    # the catalogue and the audit trail likewise
    catalogue = registry.get("/api/v1/catalogue", headers=a).json()
    assert [m["name"] for m in catalogue["models"]] == ["a-model"] and catalogue["total"] == 1
    assert registry.get("/api/v1/catalogue", params={"project": "team-b"}, headers=a).status_code == 404
    not_found_alike(
        registry.get("/api/v1/audit", params={"project": "team-b"}, headers=a),
        registry.get("/api/v1/audit", params={"project": "no-team"}, headers=a),
        "team-b",
        "no-team",
    )
    team_a_trail = registry.get("/api/v1/audit", params={"project": "team-a", "action": "registration"}, headers=a)
    assert [r["target"] for r in team_a_trail.json()] == ["a-model/1"]
    team_b_trail = registry.get(
        "/api/v1/audit", params={"project": "team-b", "action": "registration"}, headers=auth(B_ADMIN)
    )
    assert [(r["target"], r["project"]) for r in team_b_trail.json()] == [("b-model/1", "team-b")]


def test_the_mlflow_api_hides_another_projects_models_like_missing_ones(registry: TestClient) -> None:
    a = auth(A_WRITER)
    mlflow = "/api/2.0/mlflow"
    hidden = registry.get(f"{mlflow}/registered-models/get", params={"name": "b-model"}, headers=a)
    missing = registry.get(f"{mlflow}/registered-models/get", params={"name": "no-model"}, headers=a)
    not_found_alike(hidden, missing, "b-model", "no-model")
    assert hidden.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    not_found_alike(
        registry.get(f"{mlflow}/model-versions/get", params={"name": "b-model", "version": 1}, headers=a),
        registry.get(f"{mlflow}/model-versions/get", params={"name": "no-model", "version": 1}, headers=a),
        "b-model",
        "no-model",
    )
    tagged = registry.post(
        f"{mlflow}/registered-models/set-tag", json={"name": "b-model", "key": "k", "value": "v"}, headers=a
    )
    assert tagged.status_code == 404 and tagged.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert registry.get("/api/v1/models/b-model", headers=auth(B_ADMIN)).json()["tags"] == {}

    models = registry.get(f"{mlflow}/registered-models/search", headers=a).json()["registered_models"]
    assert [m["name"] for m in models] == ["a-model"]
    versions = registry.get(f"{mlflow}/model-versions/search", headers=a).json()["model_versions"]
    assert [v["name"] for v in versions] == ["a-model"]

    # a create acts in the X-Gallery-Project header's project, if the caller may write there
    created = registry.post(f"{mlflow}/registered-models/create", json={"name": "mlflow-b"}, headers=auth(B_ADMIN))
    assert created.status_code == 200, created.text
    assert registry.get("/api/v1/models/mlflow-b", headers=auth(B_ADMIN)).json()["project"] == "team-b"
    elsewhere = registry.post(
        f"{mlflow}/registered-models/create",
        json={"name": "mlflow-x"},
        headers={**a, "X-Gallery-Project": "team-b"},
    )
    assert elsewhere.status_code == 404 and elsewhere.json()["message"] == "project 'team-b' not found"
    headed = registry.post(
        f"{mlflow}/registered-models/create", json={"name": "mlflow-d"}, headers={"X-Gallery-Project": "team-b"}
    )
    assert headed.status_code == 200
    assert registry.get("/api/v1/models/mlflow-d").json()["project"] == "team-b"


def test_a_reader_cannot_write_and_a_protected_alias_needs_the_projects_admin(registry: TestClient) -> None:
    reader = registry.patch("/api/v1/models/a-model", json={"description": "x"}, headers=auth(A_READER))
    assert reader.status_code == 403
    assert reader.json() == {"error": "this request needs the writer role; your token has reader in team-a"}
    assert registry.get("/api/v1/models/a-model", headers=auth(A_READER)).status_code == 200
    mlflow_tag = registry.post(
        "/api/2.0/mlflow/registered-models/set-tag",
        json={"name": "a-model", "key": "k", "value": "v"},
        headers=auth(A_READER),
    )
    assert mlflow_tag.status_code == 403 and mlflow_tag.json()["error_code"] == "PERMISSION_DENIED"

    # a writer of team-a moves an unprotected alias, not the protected one
    assert registry.put(
        "/api/v1/models/a-model/aliases/staging", json={"version": 1}, headers=auth(A_WRITER)
    ).is_success
    protected = registry.put("/api/v1/models/a-model/aliases/production", json={"version": 1}, headers=auth(A_WRITER))
    assert protected.status_code == 403
    assert "needs the admin role in project 'team-a'" in protected.json()["error"]
    # team B's admin is no admin of team A: the model is not even there for it
    assert (
        registry.put(
            "/api/v1/models/a-model/aliases/production", json={"version": 1}, headers=auth(B_ADMIN)
        ).status_code
        == 404
    )
    moved = registry.put("/api/v1/models/a-model/aliases/production", json={"version": 1}, headers=auth(A_ADMIN))
    assert moved.status_code == 200, moved.text
    assert registry.get("/api/v1/models/a-model").json()["aliases"] == {"production": 1, "staging": 1}

    # the gate's bar and a version's status likewise need team A's admin
    policy = {"min_metrics": {"accuracy": 0.9}}
    assert (
        registry.put("/api/v1/models/a-model/validation-policy", json=policy, headers=auth(A_WRITER)).status_code == 403
    )
    assert registry.put("/api/v1/models/a-model/validation-policy", json=policy, headers=auth(A_ADMIN)).is_success
    status = registry.patch("/api/v1/models/a-model/versions/1", json={"status": "validating"}, headers=auth(A_WRITER))
    assert status.status_code == 403 and "in project 'team-a'" in status.json()["error"]
    assert registry.patch(
        "/api/v1/models/a-model/versions/1", json={"status": "validating"}, headers=auth(A_ADMIN)
    ).is_success
    moves = registry.get("/api/v1/audit", params={"project": "team-a", "action": "alias_move"}, headers=auth(A_READER))
    assert [(r["target"], r["actor"]) for r in moves.json()] == [
        ("a-model@production", principal(A_ADMIN)),
        ("a-model@staging", principal(A_WRITER)),
    ]


def test_members_granted_through_the_api_hold_their_role_from_the_next_request(registry: TestClient) -> None:
    joiner = auth(JOINER)
    member = principal(JOINER)
    assert registry.get("/api/v1/models/a-model", headers=joiner).status_code == 404
    assert [p["name"] for p in registry.get("/api/v1/projects", headers=joiner).json()] == ["team-b"]

    # only team A's admin grants in team A; the shape of a member is checked
    assert (
        registry.put(
            f"/api/v1/projects/team-a/members/{member}", json={"role": "writer"}, headers=auth(B_ADMIN)
        ).status_code
        == 404
    )
    bad = registry.put("/api/v1/projects/team-a/members/alice", json={"role": "writer"}, headers=auth(A_ADMIN))
    assert bad.status_code == 400 and "oidc:<subject>, group:<name> or token-<8 hex digits>" in bad.json()["error"]
    granted = registry.put(f"/api/v1/projects/team-a/members/{member}", json={"role": "writer"}, headers=auth(A_ADMIN))
    assert granted.status_code == 200, granted.text
    assert granted.json()["members"] == {member: "writer"}

    assert registry.get("/api/v1/models/a-model", headers=joiner).json()["project"] == "team-a"
    assert registry.patch("/api/v1/models/a-model", json={"description": "joined"}, headers=joiner).status_code == 200
    seen = {p["name"]: p for p in registry.get("/api/v1/projects", headers=joiner).json()}
    assert (seen["team-a"]["your_role"], seen["team-a"]["members"]) == ("writer", None)  # members: admins only
    assert registry.get("/api/v1/projects/team-a", headers=auth(A_ADMIN)).json()["members"] == {member: "writer"}

    revoked = registry.delete(f"/api/v1/projects/team-a/members/{member}", headers=auth(A_ADMIN))
    assert revoked.status_code == 200 and revoked.json()["members"] == {}
    not_found_alike(
        registry.get("/api/v1/models/a-model", headers=joiner),
        registry.get("/api/v1/models/no-model", headers=joiner),
        "a-model",
        "no-model",
    )
    not_found_alike(
        registry.get("/api/v1/projects/team-a", headers=joiner),
        registry.get("/api/v1/projects/no-team", headers=joiner),
        "team-a",
        "no-team",
    )

    trail = [
        record
        for record in registry.get("/api/v1/audit", params={"project": "team-a"}, headers=auth(A_ADMIN)).json()
        if record["action"].startswith("project.")
    ]
    assert [r["action"] for r in trail] == ["project.member_revoked", "project.member_granted", "project.created"]
    assert [(r["target"], r["before"], r["after"], r["actor"]) for r in trail] == [
        (
            f"project:team-a/member:{member}",
            {"member": member, "role": "writer"},
            {"member": member, "role": None},
            principal(A_ADMIN),
        ),
        (
            f"project:team-a/member:{member}",
            {"member": member, "role": None},
            {"member": member, "role": "writer"},
            principal(A_ADMIN),
        ),
        ("project:team-a", None, {"project": "team-a", "members": {}}, registry_admin_name()),
    ]


def registry_admin_name() -> str:
    return f"admin-{hashlib.sha256(ADMIN.encode()).hexdigest()[:8]}"


def test_only_an_installation_wide_admin_creates_a_project(registry: TestClient) -> None:
    by_project_admin = registry.post("/api/v1/projects", json={"name": "team-c"}, headers=auth(A_ADMIN))
    assert by_project_admin.status_code == 403
    assert "installation-wide admin" in by_project_admin.json()["error"]
    assert registry.post("/api/v1/projects", json={"name": "team-a"}).status_code == 409
    bad_name = registry.post("/api/v1/projects", json={"name": "Team C"})
    assert bad_name.status_code == 422
    with_members = registry.post(
        "/api/v1/projects", json={"name": "team-c", "members": {"group:ml-team": "writer", "oidc:alice": "admin"}}
    )
    assert with_members.status_code == 201, with_members.text
    assert with_members.json()["members"] == {"group:ml-team": "writer", "oidc:alice": "admin"}
    listed = registry.get("/api/v1/projects").json()
    assert [(p["name"], p["your_role"]) for p in listed] == [
        ("default", "admin"),
        ("team-a", "admin"),
        ("team-b", "admin"),
        ("team-c", "admin"),
    ]


def test_installation_wide_tokens_keep_working_in_default(registry: TestClient) -> None:
    created = registry.post("/api/v1/models", json={"name": "plain"})
    assert created.status_code == 201 and created.json()["project"] == "default"
    registered = registry.post("/api/v1/models/plain/versions", json={"metrics": {"accuracy": 0.9}})
    assert registered.status_code == 201 and registered.json()["project"] == "default"
    assert registry.put("/api/v1/models/plain/aliases/production", json={"version": 1}).is_success
    assert registry.get("/api/v1/models/plain/aliases/production").json()["project"] == "default"
    mlflow = registry.post("/api/2.0/mlflow/registered-models/create", json={"name": "plain-mlflow"})
    assert mlflow.status_code == 200
    assert registry.get("/api/v1/models/plain-mlflow").json()["project"] == "default"
    # the team tokens see nothing of default
    assert registry.get("/api/v1/models/plain", headers=auth(A_ADMIN)).status_code == 404


def test_the_gate_registers_into_the_events_project_and_refuses_another_projects_model(
    registry: TestClient, tmp_path: Path
) -> None:
    core = registry.app.state.resources.core_as(RegistryCore)  # type: ignore[attr-defined]
    gate = ValidationGate(core.store, open_store(f"file://{tmp_path / 'artifacts'}"))
    onnx = ArtifactRef(uri="file:///models/m.onnx", sha256="b" * 64)
    trained = ModelTrained(model="a-model", project="team-b", run_id="run-1", artifacts={"onnx": onnx})

    async def handle() -> Any:
        return await gate.on_trained(make_event(trained, "/modelgallery/trainer", event_id="trained:run-1"))

    with pytest.raises(InvalidRequest, match="model 'a-model' belongs to another project"):
        anyio.run(handle)
    assert registry.get("/api/v1/models/a-model").json()["latest_version"] == 1  # nothing registered


def test_a_group_path_can_be_a_member_as_keycloak_names_groups(registry: TestClient) -> None:
    member = "group:/ml/team-a"
    for path in (quote(member, safe=""), member):  # as the CLI sends it (%2F), and as written
        granted = registry.put(
            f"/api/v1/projects/team-a/members/{path}", json={"role": "reader"}, headers=auth(A_ADMIN)
        )
        assert granted.status_code == 200, granted.text
        assert granted.json()["members"][member] == "reader"
    revoked = registry.delete(f"/api/v1/projects/team-a/members/{quote(member, safe='')}", headers=auth(A_ADMIN))
    assert revoked.status_code == 200 and member not in revoked.json()["members"]
    # a subject is still one name: no path
    bad = registry.put("/api/v1/projects/team-a/members/oidc:a/b", json={"role": "reader"}, headers=auth(A_ADMIN))
    assert bad.status_code == 400
