"""The registry's changes in the audit trail, through its REST API and a real nats-server: who moved
an alias, from which version to which, why and in which trace; the trail read, exported and verified."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gallery_common import telemetry
from gallery_common.audit_log import AuditLog
from gallery_common.bus import EventBus
from gallery_common.nats_server import EmbeddedNats
from gallery_registry.app import create_app_for
from gallery_registry.settings import RegistrySettings

WRITER, ADMIN = "writer-token", "admin-token"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def registry(nats_server: EmbeddedNats, tmp_path: Path) -> Iterator[TestClient]:
    telemetry.configure_tracing("test-registry-audit")
    settings = RegistrySettings(
        home=tmp_path,
        nats_url=nats_server.url,
        api_tokens=f"{WRITER}:writer,{ADMIN}:admin",  # type: ignore[arg-type]
        protected_aliases="production",  # type: ignore[arg-type]
    )
    with TestClient(create_app_for(settings), headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        yield client


def _register(client: TestClient, model: str, versions: int) -> None:
    assert client.post("/api/v1/models", json={"name": model}).status_code == 201
    for _ in range(versions):
        assert client.post(f"/api/v1/models/{model}/versions", json={"metrics": {"accuracy": 0.9}}).status_code == 201


def test_an_alias_move_is_recorded_with_who_why_and_the_trace(registry: TestClient, nats_server: EmbeddedNats) -> None:
    _register(registry, "iris", 3)
    assert registry.put("/api/v1/models/iris/aliases/production", json={"version": 2}).status_code == 200
    traced = {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}
    moved = registry.put(
        "/api/v1/models/iris/aliases/production", json={"version": 3, "reason": "beats v2 on recall"}, headers=traced
    )
    assert moved.status_code == 200, moved.text
    # the same move again changes nothing and records nothing
    assert registry.put("/api/v1/models/iris/aliases/production", json={"version": 3}).status_code == 200

    answer = registry.get("/api/v1/audit", params={"model": "iris", "action": "alias_move"})
    assert answer.status_code == 200, answer.text
    latest, first = answer.json()
    assert latest["actor"].startswith("admin-")
    assert (latest["target"], latest["before"], latest["after"]) == ("iris@production", {"version": 2}, {"version": 3})
    assert latest["reason"] == "beats v2 on recall"
    assert latest["trace_id"] == TRACE
    assert first["after"] == {"version": 2} and first["before"] == {"version": None}

    registrations = registry.get("/api/v1/audit", params={"action": "registration"}).json()
    assert [r["target"] for r in registrations] == ["iris/3", "iris/2", "iris/1"]
    assert registry.get("/api/v1/audit", params={"model": "other"}).json() == []

    # a writer reads it too; the export is the stored records, which a SIEM can hash itself
    export = registry.get("/api/v1/audit/export", headers={"Authorization": f"Bearer {WRITER}"})
    assert export.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in export.text.splitlines()]
    assert [line["index"] for line in lines] == [1, 2, 3, 4, 5]
    assert all(lines[i]["prev_hash"] == lines[i - 1]["hash"] for i in range(1, 5))
    verified = registry.get("/api/v1/audit/verify").json()
    assert verified["ok"] and verified["records"] == 5

    async def in_the_stream() -> int:
        async with EventBus(nats_server.url, "auditor") as bus:
            return len(await AuditLog(bus).records("default"))

    assert asyncio.run(in_the_stream()) == 5  # kept outside the registry's database


def test_deletions_status_and_policy_changes_are_recorded(registry: TestClient) -> None:
    _register(registry, "iris", 2)
    assert (
        registry.patch(
            "/api/v1/models/iris/versions/1", json={"status": "archived"}, params={"reason": "old"}
        ).status_code
        == 200
    )
    policy = {"min_metrics": {"accuracy": 0.9}}
    assert (
        registry.put("/api/v1/models/iris/validation-policy", json=policy, params={"reason": "audit asks"}).status_code
        == 200
    )
    assert registry.delete("/api/v1/models/iris/versions/2", params={"reason": "leaked data"}).status_code == 204
    assert registry.delete("/api/v1/models/iris").status_code == 204
    records = registry.get("/api/v1/audit", params={"model": "iris"}).json()
    actions = [(r["action"], r["target"]) for r in records]
    assert actions == [
        ("deletion", "iris"),
        ("deletion", "iris/2"),
        ("policy_change", "iris/validation-policy"),
        ("status_change", "iris/1"),
        ("registration", "iris/2"),
        ("registration", "iris/1"),
    ]
    status = records[3]
    assert (status["before"], status["after"], status["reason"]) == (
        {"status": "pending"},
        {"status": "archived"},
        "old",
    )
    assert records[2]["after"]["min_metrics"] == {"accuracy": 0.9} and records[2]["reason"] == "audit asks"
    assert records[1]["reason"] == "leaked data"
    bad = registry.get("/api/v1/audit", params={"project": "Not A Project"})
    assert bad.status_code == 422


def test_mlflow_clients_changes_are_recorded_and_time_filters_apply(registry: TestClient) -> None:
    _register(registry, "iris", 1)
    mlflow = "/api/2.0/mlflow"
    created = registry.post(f"{mlflow}/model-versions/create", json={"name": "iris", "source": "s3://b/m"})
    assert created.status_code == 200, created.text
    alias = {"name": "iris", "alias": "champion", "version": "2"}
    assert registry.post(f"{mlflow}/registered-models/alias", json=alias).status_code == 200
    assert (
        registry.request(
            "DELETE", f"{mlflow}/registered-models/alias", json={"name": "iris", "alias": "champion"}
        ).status_code
        == 200
    )
    records = registry.get("/api/v1/audit", params={"model": "iris"}).json()
    assert [(r["action"], r["target"], r["after"]) for r in records[:3]] == [
        ("alias_move", "iris@champion", {"version": None}),
        ("alias_move", "iris@champion", {"version": 2}),
        ("registration", "iris/2", {"version": 2, "semver": records[2]["after"]["semver"], "status": "pending"}),
    ]
    assert {r["reason"] for r in records[:2]} == {"set through the MLflow API", "deleted through the MLflow API"}
    newest = records[0]["time"]
    assert [r["index"] for r in registry.get("/api/v1/audit", params={"since": newest}).json()] == [records[0]["index"]]
    assert len(registry.get("/api/v1/audit", params={"until": newest}).json()) == len(records) - 1


def test_descriptions_tags_and_card_text_are_recorded_with_what_changed(registry: TestClient) -> None:
    _register(registry, "iris", 1)
    edit = {"description": "flowers", "owner": "ann", "tags": {"team": "a"}}
    assert registry.patch("/api/v1/models/iris", json=edit, params={"reason": "handover"}).status_code == 200
    assert registry.patch("/api/v1/models/iris", json=edit).status_code == 200  # as it was: no change to record
    assert registry.patch("/api/v1/models/iris/versions/1/tags", json={"stage": "qa"}).status_code == 200
    mlflow = "/api/2.0/mlflow"
    tag = {"name": "iris", "version": "1", "key": "stage", "value": "prod"}
    assert registry.post(f"{mlflow}/model-versions/set-tag", json=tag).status_code == 200
    untag = registry.request("DELETE", f"{mlflow}/registered-models/delete-tag", json={"name": "iris", "key": "team"})
    assert untag.status_code == 200
    assert registry.put("/api/v1/models/iris/card", json={"intended_use": "teaching"}).status_code == 200
    assert registry.put("/api/v1/models/iris/card", json={"intended_use": "teaching"}).status_code == 200
    int8 = {"uri": "file:///a/iris.int8.onnx", "sha256": "b" * 64, "size": 1234}
    for _ in range(2):  # attached once: the same file again is no change
        assert registry.put("/api/v1/models/iris/versions/1/artifacts/int8", json=int8).status_code == 200

    records = registry.get("/api/v1/audit", params={"model": "iris"}).json()
    edits = [(r["action"], r["target"], r["before"], r["after"]) for r in records if r["action"] != "registration"]
    assert edits == [
        (
            "artifact_attached",
            "iris/1/int8",
            None,
            {"role": "int8", "uri": int8["uri"], "sha256": "b" * 64, "size": 1234},
        ),
        ("card_edit", "iris", {"revision": 1, "intended_use": None}, {"revision": 2, "intended_use": "teaching"}),
        ("metadata_change", "iris", {"tag:team": "a"}, {"tag:team": None}),
        ("metadata_change", "iris/1", {"tag:stage": "qa"}, {"tag:stage": "prod"}),
        ("metadata_change", "iris/1", {"tag:stage": None}, {"tag:stage": "qa"}),
        (
            "metadata_change",
            "iris",
            {"description": None, "owner": None, "tag:team": None},
            {"description": "flowers", "owner": "ann", "tag:team": "a"},
        ),
    ]
    assert records[5]["reason"] == "handover" and records[2]["reason"] == "changed through the MLflow API"
    assert all(r["actor"].startswith("admin-") for r in records)
    assert registry.get("/api/v1/audit/verify").json()["ok"]
