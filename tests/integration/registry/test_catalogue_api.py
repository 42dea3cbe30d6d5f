"""The Gallery's registry routes as a client sees them: the catalogue, card text with its history,
the generated model card (Markdown) and the `model-card` artifact that follows the card text and
the optimizer's report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gallery_common.artifacts import ArtifactStore
from gallery_registry.app import create_app_for
from gallery_registry.deps import RegistryCore
from gallery_registry.schemas import VersionStatus
from gallery_registry.settings import RegistrySettings
from gallery_registry.store import RegistryStore

READER, WRITER, ADMIN = "reader-token", "writer-token", "admin-token"
SHA = "a" * 64
REPORT = {
    "accuracy": 0.93,
    "macro_f1": 0.92,
    "loss": 0.2,
    "ece": 0.03,
    "per_class_recall": {"cat": 0.9, "dog": 0.96},
    "class_counts": {"cat": 40, "dog": 60},
    "confusion_matrix": {"labels": ["cat", "dog"], "matrix": [[36, 4], [2, 58]]},
    "n_test": 100,
    "latency_p50_ms": 0.05,
    "latency_p99_ms": 0.09,
    "evaluator": "onnxruntime 1.20",
}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = RegistrySettings(
        home=tmp_path,
        api_tokens=f"{READER}:reader,{WRITER}:writer,{ADMIN}:admin",  # type: ignore[arg-type]
        artifact_root=(tmp_path / "artifacts").as_uri(),
    )
    with TestClient(create_app_for(settings, with_bus=False), headers=auth(WRITER)) as test_client:
        yield test_client


def store_of(client: TestClient) -> RegistryStore:
    return client.app.state.resources.core_as(RegistryCore).store  # type: ignore[attr-defined,no-any-return]


def artifacts_of(client: TestClient) -> ArtifactStore:
    return client.app.state.resources.store  # type: ignore[attr-defined,no-any-return]


def validated_version(client: TestClient, name: str = "pets") -> None:
    """A classifier the gate passed, as the gate leaves it (report, status), with a production alias."""
    created = client.post(
        "/api/v1/models",
        json={"name": name, "description": "# Pets\nCats and dogs.", "owner": "ann", "tags": {"team": "cv"}},
    )
    assert created.status_code == 201, created.text
    version = {
        "task": "classification",
        "class_names": ["cat", "dog"],
        "metrics": {"accuracy": 0.9, "n_train": 800, "n_validation": 100},
        "lineage": {"dataset_fingerprint": "sha256:feedbeef", "training_job_id": "job-1"},
        "run_id": "run-1",
        "artifacts": {"onnx": {"uri": "file:///a/m.onnx", "sha256": SHA}},
    }
    assert client.post(f"/api/v1/models/{name}/versions", json=version).status_code == 201
    store = store_of(client)
    store.set_version_status(name, 1, VersionStatus.validating)
    store.set_version_status(name, 1, VersionStatus.validated, evaluation_report=REPORT, rejection_reasons=[])
    moved = client.put(f"/api/v1/models/{name}/aliases/production", json={"version": 1}, headers=auth(ADMIN))
    assert moved.status_code == 200, moved.text


def error(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]  # type: ignore[no-any-return]


def test_catalogue_answers_the_contracts_entries(client: TestClient) -> None:
    validated_version(client)
    client.post("/api/v1/models", json={"name": "empty"})
    page = client.get("/api/v1/catalogue", headers=auth(READER))
    assert page.status_code == 200 and page.headers["content-type"] == "application/json"
    body = page.json()
    assert (body["total"], body["next_page_token"]) == (2, None)
    empty, pets = body["models"]
    assert set(pets) == {
        "name", "summary", "owner", "tags", "task", "project", "updated_at", "latest_version", "version_count",
        "production",
    }  # fmt: skip
    assert (pets["name"], pets["summary"], pets["owner"], pets["tags"], pets["task"]) == (
        "pets",
        "Pets",
        "ann",
        {"team": "cv"},
        "classification",
    )
    production = pets["production"]
    assert set(production) == {
        "version", "semver", "status", "aliases", "metrics", "headline_metric", "recommended_variant"
    }  # fmt: skip
    assert (production["version"], production["semver"], production["status"]) == (1, "1.0.0", "validated")
    assert production["headline_metric"] == {"name": "accuracy", "value": 0.93}
    assert production["metrics"]["accuracy"] == 0.93 and production["metrics"]["n_train"] == 800
    assert production["recommended_variant"] is None
    assert empty == {
        "name": "empty",
        "summary": None,
        "owner": None,
        "tags": {},
        "task": None,
        "project": "default",
        "updated_at": empty["updated_at"],
        "latest_version": None,
        "version_count": 0,
        "production": None,
    }

    found = client.get("/api/v1/catalogue", params={"q": "CATS", "stage": "production", "tag": "team=cv"}).json()
    assert [m["name"] for m in found["models"]] == ["pets"]
    assert client.get("/api/v1/catalogue", params={"metric": "accuracy", "min_metric": 0.95}).json()["total"] == 0
    first = client.get("/api/v1/catalogue", params={"limit": 1, "sort": "name", "order": "desc"}).json()
    assert [m["name"] for m in first["models"]] == ["pets"] and first["total"] == 2
    rest = client.get("/api/v1/catalogue", params={"limit": 1, "order": "desc", "page_token": first["next_page_token"]})
    assert [m["name"] for m in rest.json()["models"]] == ["empty"]

    assert "min_metric needs metric" in error(client.get("/api/v1/catalogue", params={"min_metric": 1}), 400)
    assert "unknown stage" in error(client.get("/api/v1/catalogue", params={"stage": "gold"}), 400)
    assert "page_token" in error(client.get("/api/v1/catalogue", params={"page_token": "garbage"}), 400)
    assert client.get("/api/v1/catalogue", params={"limit": 101}).status_code == 422
    assert client.get("/api/v1/catalogue", headers={"Authorization": ""}).status_code == 401


def test_card_text_needs_a_writer_and_keeps_its_history(client: TestClient) -> None:
    client.post("/api/v1/models", json={"name": "iris", "description": "flowers"})
    card = client.get("/api/v1/models/iris/card", headers=auth(READER)).json()
    assert (card["revision"], card["description"], card["intended_use"], card["limitations"]) == (
        0,
        "flowers",
        None,
        None,
    )

    refused = client.put("/api/v1/models/iris/card", json={"intended_use": "x"}, headers=auth(READER))
    assert "needs the writer role" in error(refused, 403)
    first = client.put(
        "/api/v1/models/iris/card", json={"description": "# Iris\nthree species", "intended_use": "teaching"}
    )
    assert first.status_code == 200, first.text
    assert (first.json()["revision"], first.json()["updated_by"].startswith("writer-")) == (1, True)
    second = client.put("/api/v1/models/iris/card", json={"limitations": "150 rows"}).json()
    assert (second["revision"], second["intended_use"], second["limitations"]) == (2, "teaching", "150 rows")
    # the model's description follows the card's
    assert client.get("/api/v1/models/iris").json()["description"] == "# Iris\nthree species"
    assert "extra" in error(client.put("/api/v1/models/iris/card", json={"extra": "no"}), 422)

    history = client.get("/api/v1/models/iris/card/history", headers=auth(READER)).json()
    assert [h["revision"] for h in history] == [2, 1]
    assert history[1]["limitations"] is None and history[0]["limitations"] == "150 rows"

    assert "model 'nope' not found" in error(client.get("/api/v1/models/nope/card"), 404)
    assert error(client.get("/api/v1/models/nope/card/history"), 404)
    assert error(client.put("/api/v1/models/nope/card", json={"intended_use": "x"}), 404)


def front_matter(markdown: str) -> str:
    assert markdown.startswith("---\n")
    return markdown.split("\n---\n", 1)[0]


def test_a_versions_card_is_markdown_in_the_hugging_face_layout(client: TestClient) -> None:
    validated_version(client)
    client.put("/api/v1/models/pets/card", json={"intended_use": "Sorting pet photos.", "limitations": "No birds."})
    answer = client.get("/api/v1/models/pets/versions/1/card", headers=auth(READER))
    assert answer.status_code == 200 and answer.headers["content-type"] == "text/markdown; charset=utf-8"
    card = answer.text
    meta = front_matter(card)
    assert 'pipeline_tag: "tabular-classification"' in meta and '- "team:cv"' in meta
    assert 'datasets:\n- "sha256:feedbeef"' in meta and "license" not in meta
    assert 'model-index:\n- name: "pets"' in meta
    assert '    - type: "accuracy"\n      value: 0.93' in meta and '"n_test"' not in meta
    for section in ("## Description", "## Intended use", "## Limitations", "## Training data", "## Evaluation"):
        assert section in card
    assert "Cats and dogs." in card and "Sorting pet photos." in card and "No birds." in card
    assert "| cat | 40 | 40.0% |" in card  # class balance
    assert "| train | 800 |" in card and "| test | 100 |" in card  # split sizes
    assert "| dog | 0.96 |" in card  # per-class recall
    assert "| true \\ predicted | cat | dog |" in card and "| cat | 36 | 4 |" in card  # confusion matrix
    assert "| accuracy | 0.93 | ≥ 0.7 |" in card  # the gate's metric beside the policy's bar
    assert "_Not optimized yet._" in card

    assert "no version 9" in error(client.get("/api/v1/models/pets/versions/9/card"), 404)
    assert error(client.get("/api/v1/models/nope/versions/1/card"), 404)


def optimizer_report(client: TestClient) -> dict[str, Any]:
    """The optimizer's report.json stored as it stores it, and its reference."""
    doc = {
        "model": "pets",
        "version": 1,
        "recommended": "int8_dynamic",
        "recommendation_reason": "fastest at batch 32 within the accuracy budget",
        "variants": [
            {"name": "fp32", "size_bytes": 100000.0, "latency_b1_p50_ms": 0.08, "accuracy": 0.93},
            {"name": "int8_dynamic", "size_bytes": 26000.0, "latency_b1_p50_ms": 0.04, "accuracy": 0.925},
        ],
    }
    ref = artifacts_of(client).put("optimized/pets/1/report.json", json.dumps(doc).encode())
    return ref.model_dump(mode="json", exclude_none=True)


def card_bytes(client: TestClient) -> tuple[str, str]:
    version = client.get("/api/v1/models/pets/versions/1").json()
    card = version["artifacts"]["model-card"]
    data = artifacts_of(client).get(card["uri"], card["sha256"]).decode()
    return card["sha256"], data


def test_the_card_artifact_follows_the_optimizer_and_the_card_text(client: TestClient) -> None:
    validated_version(client)
    assert "model-card" not in client.get("/api/v1/models/pets/versions/1").json()["artifacts"]

    attached = client.put("/api/v1/models/pets/versions/1/artifacts/report", json=optimizer_report(client))
    assert attached.status_code == 200, attached.text
    version = client.get("/api/v1/models/pets/versions/1").json()
    assert version["tags"]["optimizer.recommended"] == "int8_dynamic"
    assert (version["tags"]["optimizer.recommended_size_bytes"], version["tags"]["optimizer.fp32_p50_ms"]) == (
        "26000",
        "0.08",
    )
    entry = client.get("/api/v1/catalogue").json()["models"][0]
    assert entry["production"]["recommended_variant"] == {"name": "int8_dynamic", "size_bytes": 26000.0, "p50_ms": 0.04}
    first_sha, first = card_bytes(client)
    assert "- recommended variant: int8_dynamic" in first and "- size: 25.4 KiB" in first
    assert version["artifacts"]["model-card"]["format"] == "md"

    client.put("/api/v1/models/pets/card", json={"limitations": "Never seen a hamster."})
    second_sha, second = card_bytes(client)
    assert second_sha != first_sha and "Never seen a hamster." in second
    # the earlier card stays readable under its own key: a re-validation verifies what is recorded
    assert artifacts_of(client).exists(f"cards/pets/1/model-card-{first_sha[:16]}.md")
    assert second == client.get("/api/v1/models/pets/versions/1/card").text  # stored = rendered now

    tagged = client.patch("/api/v1/models/pets/versions/1/tags", json={"optimizer.recommended": "fp16", "note": "x"})
    assert tagged.status_code == 200, tagged.text
    assert tagged.json()["tags"]["optimizer.recommended"] == "fp16" and tagged.json()["tags"]["note"] == "x"
    assert "- recommended variant: fp16" in card_bytes(client)[1]
    removed = client.patch("/api/v1/models/pets/versions/1/tags", json={"note": None}).json()
    assert "note" not in removed["tags"] and removed["tags"]["optimizer.recommended"] == "fp16"
    assert "invalid" in error(client.patch("/api/v1/models/pets/versions/1/tags", json={"bad key": "v"}), 422)
    refused = client.patch("/api/v1/models/pets/versions/1/tags", json={"a": "b"}, headers=auth(READER))
    assert error(refused, 403)
