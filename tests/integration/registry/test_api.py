"""The registry's native REST API (`/api/v1`) as a client sees it: answers, errors and auth."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from federated_lineage import federation

from gallery_common.service import find_service
from gallery_registry.app import create_app_for
from gallery_registry.settings import RegistrySettings

READER, WRITER, ADMIN = "reader-token", "writer-token", "admin-token"
SHA_A, SHA_B = "a" * 64, "b" * 64


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = RegistrySettings(
        home=tmp_path,
        api_tokens=f"{READER}:reader,{WRITER}:writer,{ADMIN}:admin",  # type: ignore[arg-type]
        protected_aliases="production,champion",  # type: ignore[arg-type]
    )
    with TestClient(create_app_for(settings, with_bus=False), headers=auth(WRITER)) as test_client:
        yield test_client


def signature(features: int) -> dict[str, Any]:
    return {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, features]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}],
    }


def error(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]  # type: ignore[no-any-return]


def test_tokens_and_roles(client: TestClient) -> None:
    response = client.get("/api/v1/models", headers={"Authorization": ""})
    assert "missing bearer token" in error(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    assert "unknown bearer token" in error(client.get("/api/v1/models", headers=auth("nope")), 401)
    assert client.get("/api/v1/models", headers=auth(READER)).status_code == 200
    denied = client.post("/api/v1/models", json={"name": "m"}, headers=auth(READER))
    assert "needs the writer role; your token has reader" in error(denied, 403)
    assert client.post("/api/v1/models", json={"name": "m"}).status_code == 201


def test_protected_aliases_need_the_admin_token(client: TestClient) -> None:
    client.post("/api/v1/models", json={"name": "m"})
    client.post("/api/v1/models/m/versions", json={})
    for alias in ("production", "champion"):
        refused = client.put(f"/api/v1/models/m/aliases/{alias}", json={"version": 1})
        assert f"alias '{alias}' is protected" in error(refused, 403)
    moved = client.put("/api/v1/models/m/aliases/production", json={"version": 1, "reason": "ok"}, headers=auth(ADMIN))
    assert moved.status_code == 200 and moved.json()["version"] == 1
    assert "protected" in error(client.delete("/api/v1/models/m/aliases/production"), 403)
    assert client.put("/api/v1/models/m/aliases/staging", json={"version": 1}).status_code == 200
    assert client.delete("/api/v1/models/m/aliases/staging").status_code == 204
    # the history names who moved it: the admin token's caller, not the writer's
    history = client.get("/api/v1/models/m/aliases/production/history").json()
    assert history[0]["actor"].startswith("admin-") and history[0]["reason"] == "ok"
    assert client.delete("/api/v1/models/m/aliases/production", headers=auth(ADMIN)).status_code == 204


def test_model_lifecycle_and_errors(client: TestClient) -> None:
    created = client.post("/api/v1/models", json={"name": "iris", "owner": "ann", "tags": {"team": "cv"}})
    assert created.status_code == 201
    assert created.json()["tags"] == {"team": "cv"} and created.json()["latest_version"] is None
    assert "model 'iris' already exists" in error(client.post("/api/v1/models", json={"name": "iris"}), 409)
    assert "name" in error(client.post("/api/v1/models", json={"name": "no spaces"}), 422)
    assert "extra" in error(client.post("/api/v1/models", json={"name": "x", "colour": 1}), 422).lower()
    assert "model 'nope' not found" in error(client.get("/api/v1/models/nope"), 404)

    patched = client.patch("/api/v1/models/iris", json={"description": "flowers"})
    assert patched.json()["description"] == "flowers" and patched.json()["owner"] == "ann"
    # deleting a model (and every version, alias and policy with it) is an admin operation
    assert "needs the admin role; your token has writer" in error(client.delete("/api/v1/models/iris"), 403)
    assert client.get("/api/v1/models/iris").status_code == 200
    assert client.delete("/api/v1/models/iris", headers=auth(ADMIN)).status_code == 204
    assert client.get("/api/v1/models/iris").status_code == 404
    assert client.delete("/api/v1/models/iris", headers=auth(ADMIN)).status_code == 404


def test_search_filters_orders_and_pages(client: TestClient) -> None:
    for name, owner, tags in [
        ("alpha", "ann", {"team": "cv"}),
        ("beta", "bob", {"team": "nlp"}),
        ("gamma-digits", "ann", {"team": "cv"}),
        ("Digits", "bob", {}),
    ]:
        client.post("/api/v1/models", json={"name": name, "owner": owner, "tags": tags})

    def names(**params: Any) -> list[str]:
        response = client.get("/api/v1/models", params=params)
        assert response.status_code == 200, response.text
        return [m["name"] for m in response.json()["models"]]

    assert names(name="DIGITS") == ["Digits", "gamma-digits"]
    assert names(tag="team=cv") == ["alpha", "gamma-digits"]
    assert names(tag="team") == ["alpha", "beta", "gamma-digits"]
    assert names(owner="bob", order="desc") == ["beta", "Digits"]
    assert names(order_by="created", order="desc") == ["Digits", "gamma-digits", "beta", "alpha"]
    assert names(offset=3) == ["gamma-digits"]

    seen: list[str] = []
    params: dict[str, Any] = {"limit": 3}
    while True:
        page = client.get("/api/v1/models", params=params).json()
        seen += [m["name"] for m in page["models"]]
        if page["next_page_token"] is None:
            break
        params["page_token"] = page["next_page_token"]
    assert seen == ["Digits", "alpha", "beta", "gamma-digits"]

    assert "invalid page_token" in error(client.get("/api/v1/models", params={"page_token": "garbage!"}), 400)
    both = client.get("/api/v1/models", params={"page_token": params["page_token"], "offset": 1})
    assert "not both" in error(both, 400)
    assert "limit" in error(client.get("/api/v1/models", params={"limit": 0}), 422)
    assert "order_by" in error(client.get("/api/v1/models", params={"order_by": "size"}), 422)


def test_versions_semver_and_registration(client: TestClient) -> None:
    client.post("/api/v1/models", json={"name": "m"})
    # registration is idempotent on the event id only for the gate (test_registry_access.py):
    # over REST the field is refused
    first = client.post("/api/v1/models/m/versions", json={"signature": signature(4)})
    assert first.status_code == 201
    assert (first.json()["version"], first.json()["semver"], first.json()["status"]) == (1, "1.0.0", "pending")
    assert first.json()["source_event_id"] is None

    same = client.post("/api/v1/models/m/versions", json={"signature": signature(4)})
    assert same.json()["semver"] == "1.1.0"
    wider = client.post("/api/v1/models/m/versions", json={"signature": signature(8)})
    assert wider.json()["semver"] == "2.0.0"
    assert client.post("/api/v1/models/m/versions", json={"semver": "2.0.1"}).json()["semver"] == "2.0.1"

    older = client.post("/api/v1/models/m/versions", json={"semver": "1.9.0"})
    assert "semver 1.9.0 must be greater than the latest version's 2.0.1" in error(older, 422)
    bad = client.post("/api/v1/models/m/versions", json={"semver": "two"})
    assert "not a valid semantic version" in error(bad, 422)
    assert "not found" in error(client.post("/api/v1/models/nope/versions", json={}), 404)
    assert "no version 99" in error(client.get("/api/v1/models/m/versions/99"), 404)
    assert "version" in error(client.get("/api/v1/models/m/versions/one"), 422)

    listed = client.get("/api/v1/models/m/versions", params={"limit": 2}).json()
    assert [v["version"] for v in listed["versions"]] == [4, 3] and listed["next_page_token"]
    assert "not found" in error(client.get("/api/v1/models/nope/versions"), 404)


def test_version_status_tags_and_artifacts(client: TestClient) -> None:
    onnx = {"uri": "file:///a/m.onnx", "sha256": SHA_A, "size": 3, "format": "onnx"}
    client.post("/api/v1/models", json={"name": "m"})
    client.post("/api/v1/models/m/versions", json={"artifacts": {"onnx": onnx}})

    # status is the gate's to set: a writer may not change it, an admin may (by the transition rules)
    by_writer = client.patch("/api/v1/models/m/versions/1", json={"status": "validating"})
    assert "changing a version's status needs the admin role" in error(by_writer, 403)
    wrong = client.patch("/api/v1/models/m/versions/1", json={"status": "validated"}, headers=auth(ADMIN))
    assert "cannot go from pending to validated" in error(wrong, 409)
    assert "status" in error(client.patch("/api/v1/models/m/versions/1", json={"status": "great"}), 422)
    moved = client.patch(
        "/api/v1/models/m/versions/1", json={"status": "validating", "tags": {"k": "v"}}, headers=auth(ADMIN)
    )
    assert moved.json()["status"] == "validating" and moved.json()["tags"] == {"k": "v"}
    tagged = client.patch("/api/v1/models/m/versions/1", json={"tags": {"k": "w"}, "description": "d"})
    assert tagged.status_code == 200 and tagged.json()["tags"] == {"k": "w"}
    filtered = client.get("/api/v1/models/m/versions", params={"status": "validating"}).json()
    assert [v["version"] for v in filtered["versions"]] == [1]

    int8 = {"uri": "file:///a/m.int8.onnx", "sha256": SHA_B}
    attached = client.put("/api/v1/models/m/versions/1/artifacts/int8", json=int8)
    assert attached.status_code == 200 and attached.json()["role"] == "int8"
    assert client.put("/api/v1/models/m/versions/1/artifacts/int8", json=int8).json() == attached.json()
    clash = client.put("/api/v1/models/m/versions/1/artifacts/int8", json={**int8, "sha256": SHA_A})
    assert "artifacts are immutable" in error(clash, 409)
    assert "role" in error(client.put("/api/v1/models/m/versions/1/artifacts/zip", json=int8), 422)
    assert "sha256" in error(client.put("/api/v1/models/m/versions/1/artifacts/fp16", json={"uri": "file:///x"}), 422)
    bad_uri = client.put("/api/v1/models/m/versions/1/artifacts/fp16", json={"uri": "http://x", "sha256": SHA_A})
    assert "uri" in error(bad_uri, 422)
    assert set(client.get("/api/v1/models/m/versions/1").json()["artifacts"]) == {"onnx", "int8"}


def test_aliases_resolve_lineage_and_history(client: TestClient) -> None:
    client.post("/api/v1/models", json={"name": "m"})
    client.post("/api/v1/models/m/versions", json={"lineage": {"training_job_id": "j1", "dataset_fingerprint": "d"}})
    client.post("/api/v1/models/m/versions", json={"lineage": {"training_job_id": "j2", "parent_version": 1}})
    onnx = {"uri": "file:///a/m.onnx", "sha256": SHA_A}
    client.put("/api/v1/models/m/versions/2/artifacts/onnx", json=onnx)

    client.put("/api/v1/models/m/aliases/canary", json={"version": 1})
    client.put("/api/v1/models/m/aliases/canary", json={"version": 2, "reason": "new run"})
    resolved = client.get("/api/v1/models/m/aliases/canary")
    assert resolved.json()["version"] == 2 and resolved.json()["artifacts"]["onnx"]["sha256"] == SHA_A
    assert [a["alias"] for a in client.get("/api/v1/models/m/aliases").json()] == ["canary"]
    history = client.get("/api/v1/models/m/aliases/canary/history").json()
    assert [(h["from_version"], h["to_version"], h["reason"]) for h in history] == [(1, 2, "new run"), (None, 1, None)]
    assert history[0]["actor"].startswith("writer-")

    assert "no alias 'shadow'" in error(client.get("/api/v1/models/m/aliases/shadow"), 404)
    assert "never had one" in error(client.get("/api/v1/models/m/aliases/shadow/history"), 404)
    assert "no version 9" in error(client.put("/api/v1/models/m/aliases/canary", json={"version": 9}), 404)
    assert "is invalid" in error(client.put("/api/v1/models/m/aliases/9lives", json={"version": 1}), 422)
    assert "version" in error(client.put("/api/v1/models/m/aliases/canary", json={"version": 0}), 422)

    lineage = client.get("/api/v1/models/m/versions/2/lineage").json()
    assert [(s["version"], s["training_job_id"]) for s in lineage["chain"]] == [(2, "j2"), (1, "j1")]
    assert lineage["chain"][1]["dataset_fingerprint"] == "d"
    parentless = client.post("/api/v1/models/m/versions", json={"lineage": {"parent_version": 7}})
    assert "parent_version 7" in error(parentless, 422)


def test_a_federated_versions_lineage_comes_back_and_bad_shapes_are_refused(client: TestClient) -> None:
    client.post("/api/v1/models", json={"name": "fed"})

    def register(federated: dict[str, Any]) -> Any:
        return client.post("/api/v1/models/fed/versions", json={"lineage": {"federation": federated}})

    sent = federation().model_dump(mode="json")
    created = register(sent)
    assert created.status_code == 201, created.text
    assert created.json()["lineage"]["federation"] == sent
    assert client.get("/api/v1/models/fed/versions/1").json()["lineage"]["federation"] == sent
    listed = client.get("/api/v1/models/fed/versions").json()["versions"]
    assert [v["lineage"]["federation"]["sites"][0]["name"] for v in listed] == ["clinic-north"]
    assert client.get("/api/v1/models/fed/versions/1/lineage").json()["chain"][0]["federation"] == sent
    assert "| clinic-north | `111111111111` | 420 | 12 |" in client.get("/api/v1/models/fed/versions/1/card").text

    for field, bad in (("rounds", -1), ("min_sites", 0), ("sites", "three"), ("strategy", None)):
        assert f"lineage.federation.{field}" in error(register({**sent, field: bad}), 422)
    site = {**sent["sites"][0], "data_fingerprint": "not-a-sha256"}
    assert "data_fingerprint" in error(register({**sent, "sites": [site]}), 422)
    assert "privacy.delta" in error(register({**sent, "privacy": {**sent["privacy"], "delta": 2}}), 422)
    assert [v["version"] for v in client.get("/api/v1/models/fed/versions").json()["versions"]] == [1]


def test_validation_policy_round_trip(client: TestClient) -> None:
    client.post("/api/v1/models", json={"name": "m"})
    default = client.get("/api/v1/models/m/validation-policy").json()
    assert default["min_metrics"] == {"accuracy": 0.7} and default["updated_at"] is None
    policy = {"min_metrics": {"f1": 0.9}, "champion_alias": "champion", "champion_tolerance": 0.02}
    # the policy is the gate's bar: a writer lowering it would pass their own model
    assert "admin" in error(client.put("/api/v1/models/m/validation-policy", json=policy), 403)
    saved = client.put("/api/v1/models/m/validation-policy", json=policy, headers=auth(ADMIN))
    assert saved.status_code == 200 and saved.json()["updated_at"] is not None
    fetched = client.get("/api/v1/models/m/validation-policy").json()
    assert fetched["min_metrics"] == {"f1": 0.9} and fetched["max_metrics"] == {"latency_p99_ms": 50.0}
    negative = client.put("/api/v1/models/m/validation-policy", json={"champion_tolerance": -1}, headers=auth(ADMIN))
    assert "champion_tolerance" in error(negative, 422)
    assert client.get("/api/v1/models/nope/validation-policy").status_code == 404


def test_openapi_documents_the_routes_with_response_models(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    resolve = schema["paths"]["/api/v1/models/{name}/aliases/{alias}"]["get"]
    assert resolve["summary"] == "Resolve name@alias"
    assert resolve["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/VersionPublic")
    for path, methods in schema["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        for method, operation in methods.items():
            ok = {code: r for code, r in operation["responses"].items() if code in {"200", "201"}}
            if not ok:  # 204: nothing to describe
                continue
            content = next(iter(ok.values()))["content"]
            if "application/json" not in content:  # the model card is Markdown, the audit export JSON Lines
                assert set(content) in ({"text/markdown"}, {"application/x-ndjson"}), f"{method.upper()} {path}"
                continue
            body = content["application/json"]["schema"]
            assert "$ref" in body or "$ref" in body.get("items", {}), f"{method.upper()} {path} has no response model"


def test_installed_entry_point_builds_the_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALLERY_HOME", str(tmp_path))
    monkeypatch.setenv("GALLERY_PROTECTED_ALIASES", "production, gold")
    spec = find_service("registry")
    assert spec is not None and spec.port == 8001
    app = spec.create_app()
    assert app.state.settings.protected_aliases == frozenset({"production", "gold"})
    assert app.state.settings.resolved_database_url.endswith("registry.db")
