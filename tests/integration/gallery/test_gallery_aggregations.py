"""The gallery's aggregations over stand-ins of the services: the catalogue with deployments merged in,
a model's lineage graph, and held-out examples read from a real NPZ split in a real artifact store
(a folder, and S3 on moto)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from gallery_fakes import READER, Scene, Stack, deployment, gallery_stack, version

from gallery_common.artifacts import ArtifactStore, open_store
from gallery_common.contracts import write_split
from gallery_common.settings import GallerySettings

AUTH = {"Authorization": f"Bearer {READER}"}
MODEL = "digits-mlp"


def entry(name: str, **extra: Any) -> dict[str, Any]:
    """A catalogue entry as the registry's `GET /api/v1/catalogue` answers it."""
    return {
        "name": name,
        "summary": f"{name} summary",
        "owner": "vision-team",
        "tags": {"team": "vision"},
        "task": "classification",
        "updated_at": "2026-12-01T12:00:00Z",
        "latest_version": 2,
        "version_count": 2,
        "production": None,
        **extra,
    }


@pytest.fixture
def scene() -> Scene:
    return Scene(
        catalogue={
            "models": [entry("digits-mlp"), entry("iris-mlp"), entry("wine-mlp")],
            "next_page_token": "Mw",
            "total": 7,
        },
        deployments=[
            deployment("digits-mlp", 1, "retired", 0.0),
            deployment("digits-mlp", 2, "production", 90.0, "int8_dynamic"),
            deployment("digits-mlp", 3, "canary", 10.0),
            deployment("iris-mlp", 1, "production", 100.0),
        ],
    )


@pytest.fixture
def stack(scene: Scene, tmp_path: Path) -> Iterator[Stack]:
    with gallery_stack(scene, tmp_path) as running:
        yield running


def test_the_catalogue_is_the_registrys_page_with_each_models_deployment(stack: Stack, scene: Scene) -> None:
    query = "q=mlp&tag=team%3Dvision&tag=gpu&sort=metric&metric=accuracy&min_metric=0.9&limit=3&page_token=MA"
    answer = httpx.get(f"{stack.gallery}/api/gallery/catalogue?{query}", headers=AUTH)
    assert answer.status_code == 200
    page = answer.json()
    assert [m["name"] for m in page["models"]] == ["digits-mlp", "iris-mlp", "wine-mlp"]
    assert page["next_page_token"] == "Mw" and page["total"] == 7 and page["warnings"] == []
    assert page["models"][0]["owner"] == "vision-team", "the registry's fields stay as they were"
    by_name = {m["name"]: m["deployment"] for m in page["models"]}
    assert by_name["digits-mlp"] == {
        "state": "canary",
        "traffic": [
            {"version": 2, "stage": "production", "percent": 90.0},
            {"version": 3, "stage": "canary", "percent": 10.0},
        ],
    }
    assert by_name["iris-mlp"] == {
        "state": "serving",
        "traffic": [{"version": 1, "stage": "production", "percent": 100.0}],
    }
    assert by_name["wine-mlp"] == {"state": "none", "traffic": []}
    asked = scene.requests_to("/api/v1/catalogue")
    assert len(asked) == 1 and asked[0].query == query, "the query reaches the registry as it was sent"
    assert asked[0].headers["authorization"] == AUTH["Authorization"], "with the caller's own token"


def test_a_catalogue_without_the_deployer_says_so_and_without_the_registry_fails(scene: Scene, tmp_path: Path) -> None:
    with gallery_stack(scene, tmp_path, down=("deployer",)) as running:
        page = httpx.get(f"{running.gallery}/api/gallery/catalogue", headers=AUTH).json()
        assert [m["deployment"] for m in page["models"]] == [{"state": "unknown", "traffic": []}] * 3
        assert page["warnings"] == [
            f"deployments unknown: the deployer at {running.services['deployer']} does not answer"
        ]
    with gallery_stack(scene, tmp_path, down=("registry",)) as running:
        answer = httpx.get(f"{running.gallery}/api/gallery/catalogue", headers=AUTH)
        assert answer.status_code == 502
        assert answer.json() == {"error": f"the registry at {running.services['registry']} does not answer"}


def test_the_registrys_refusal_of_a_catalogue_query_comes_through(stack: Stack, scene: Scene) -> None:
    answer = httpx.get(f"{stack.gallery}/api/gallery/catalogue?sort=bogus", headers=AUTH)
    assert answer.status_code == 400 and answer.json() == {"error": "the registry: sort: one of name, updated, metric"}
    refused = httpx.get(f"{stack.gallery}/api/gallery/catalogue", headers={"Authorization": "Bearer nope"})
    assert refused.status_code == 401


def lineage_scene(scene: Scene) -> None:
    """digits-mlp: v1 from run r1; v2 fine-tuned from v1 by run r2, the winning trial of search s1 (whose
    first trial r4 made no version) with int8 and fp16 variants; v3 rejected; v2's int8 in production
    and v3 as a canary."""
    onnx = {"uri": "file:///a/v.onnx", "sha256": "b" * 64}
    variant = {"uri": "file:///a/v.int8.onnx", "sha256": "c" * 64, "size": 120_000, "format": "onnx"}
    scene.versions[MODEL] = [
        version(MODEL, 1, run_id="r1", job_id="j1", fingerprint="fp-digits", artifacts={"onnx": onnx}),
        version(
            MODEL,
            2,
            run_id="r2",
            job_id="j2",
            fingerprint="fp-digits",
            parent=1,
            aliases=["production"],
            artifacts={"onnx": onnx, "int8": variant, "fp16": variant},
        ),
        version(MODEL, 3, status="rejected", run_id=None, job_id="j3", fingerprint="fp-digits-2"),
    ]
    run = {"model": MODEL, "status": "finished", "metrics": {"val_accuracy": 0.97}, "dataset_fingerprint": "fp-digits"}
    scene.runs = [
        {"id": "r1", "job_id": "j1", **run},
        {"id": "r2", "job_id": "j2", **run},
        {"id": "r3", "job_id": "j3", **run, "dataset_fingerprint": "fp-digits-2"},
        {"id": "r4", "job_id": "j4", **run},
    ]
    scene.jobs = [
        {"id": "j1", "model": MODEL, "run_id": "r1", "search_id": None, "trial": None},
        {"id": "j2", "model": MODEL, "run_id": "r2", "search_id": "s1", "trial": 2},
        {"id": "j3", "model": MODEL, "run_id": "r3", "search_id": None, "trial": None},
        {"id": "j4", "model": MODEL, "run_id": "r4", "search_id": "s1", "trial": 1},
    ]
    scene.searches["s1"] = {
        "id": "s1",
        "model": MODEL,
        "status": "succeeded",
        "budget": 4,
        "metric": "accuracy",
        "direction": "maximize",
        "winner_run_id": "r2",
        "trials": [
            {"number": 1, "job_id": "j4", "params": {}, "state": "rejected", "value": 0.81, "reasons": []},
            {"number": 2, "job_id": "j2", "params": {}, "state": "validated", "value": 0.97, "reasons": []},
        ],
    }


def test_the_lineage_graph_joins_data_runs_searches_versions_variants_and_deployments(
    stack: Stack, scene: Scene
) -> None:
    lineage_scene(scene)
    answer = httpx.get(f"{stack.gallery}/api/gallery/models/{MODEL}/lineage", headers=AUTH)
    assert answer.status_code == 200
    graph = answer.json()
    assert graph["warnings"] == []
    nodes = {n["id"]: n for n in graph["nodes"]}
    edges = {(e["source"], e["target"]) for e in graph["edges"]}
    kinds = {
        kind: sorted(i for i, n in nodes.items() if n["kind"] == kind) for kind in {n["kind"] for n in nodes.values()}
    }
    assert kinds == {
        "dataset": ["dataset:fp-digits", "dataset:fp-digits-2"],
        "run": ["run:r1", "run:r2", "run:r3", "run:r4"],
        "search": ["search:s1"],
        "version": ["version:1", "version:2", "version:3"],
        "variant": ["variant:2:fp16", "variant:2:int8"],
        "deployment": [
            "deployment:digits-mlp-v1-fp32",
            "deployment:digits-mlp-v2-int8_dynamic",
            "deployment:digits-mlp-v3-fp32",
        ],
    }
    assert edges == {
        ("dataset:fp-digits", "run:r1"),
        ("dataset:fp-digits", "run:r2"),
        ("dataset:fp-digits", "run:r4"),
        ("dataset:fp-digits-2", "run:r3"),
        ("run:r1", "version:1"),
        ("run:r2", "version:2"),
        ("run:r3", "version:3"),  # found from the version's training job
        ("search:s1", "run:r2"),
        ("search:s1", "run:r4"),
        ("version:1", "run:r2"),  # v2 started from v1
        ("version:2", "variant:2:int8"),
        ("version:2", "variant:2:fp16"),
        ("version:1", "deployment:digits-mlp-v1-fp32"),
        ("variant:2:int8", "deployment:digits-mlp-v2-int8_dynamic"),
        ("version:3", "deployment:digits-mlp-v3-fp32"),
    }
    assert all(e["source"] in nodes and e["target"] in nodes for e in graph["edges"])
    assert nodes["version:2"]["href"] == f"/models/{MODEL}/versions/2"
    assert nodes["version:2"]["label"] == "v2 (1.1.0)" and "@production" in nodes["version:2"]["detail"]
    assert nodes["run:r2"]["href"] == "/runs/r2"
    assert nodes["dataset:fp-digits"]["href"] is None
    assert "2 trials of 4" in nodes["search:s1"]["detail"] and "best accuracy 0.97" in nodes["search:s1"]["detail"]
    assert nodes["deployment:digits-mlp-v2-int8_dynamic"]["href"] == f"/monitoring/{MODEL}"
    assert "90 % of traffic" in nodes["deployment:digits-mlp-v2-int8_dynamic"]["detail"]
    assert "117.2 KiB" in nodes["variant:2:int8"]["detail"]
    versions_asked = scene.requests_to(f"/api/v1/models/{MODEL}/versions")
    assert len(versions_asked) == 2, "the gallery follows the registry's pages"


def test_an_imported_version_comes_from_its_import_in_the_lineage(stack: Stack, scene: Scene) -> None:
    """A version made by `gallery models import`: its run is labelled as the import of the file it names."""
    run_id = "import-0123456789ab"
    scene.versions[MODEL] = [version(MODEL, 1, run_id=run_id, job_id=run_id, fingerprint="fp-import")]
    scene.runs = [
        {
            "id": run_id,
            "job_id": run_id,
            "model": MODEL,
            "status": "succeeded",
            "metrics": {"test_accuracy": 0.97},
            "dataset_fingerprint": "fp-import",
            "system": {"engine": "import"},
            "params": {"source": "import", "file": "logreg.onnx"},
        }
    ]
    graph = httpx.get(f"{stack.gallery}/api/gallery/models/{MODEL}/lineage", headers=AUTH).json()
    nodes = {n["id"]: n for n in graph["nodes"]}
    imported = nodes[f"run:{run_id}"]
    assert imported["label"] == "import 01234567"
    assert imported["detail"].startswith("imported logreg.onnx · succeeded")
    assert imported["href"] == f"/runs/{run_id}"
    assert {(e["source"], e["target"]) for e in graph["edges"]} >= {
        ("dataset:fp-import", f"run:{run_id}"),
        (f"run:{run_id}", "version:1"),
    }


def test_a_lineage_without_the_trainer_keeps_what_the_registry_says(scene: Scene, tmp_path: Path) -> None:
    lineage_scene(scene)
    with gallery_stack(scene, tmp_path, down=("trainer",)) as running:
        graph = httpx.get(f"{running.gallery}/api/gallery/models/{MODEL}/lineage", headers=AUTH).json()
    assert any("runs: the trainer at" in w for w in graph["warnings"])
    kinds = {n["kind"] for n in graph["nodes"]}
    assert {"dataset", "run", "version", "variant", "deployment"} <= kinds
    assert {"source": "run:r1", "target": "version:1"} in graph["edges"]


def test_an_unknown_model_has_no_lineage(stack: Stack) -> None:
    missing = httpx.get(f"{stack.gallery}/api/gallery/models/nothing/lineage", headers=AUTH)
    assert missing.status_code == 404 and missing.json() == {"error": "no model 'nothing'"}


# ---- held-out examples --------------------------------------------------------------------------


def split_bytes(rows: int = 40) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((rows, 64), dtype=np.float32) * 16
    y = np.arange(rows) % 10
    buffer = io.BytesIO()
    write_split(buffer, x, y)
    return buffer.getvalue(), x, y


def register_digits(
    scene: Scene, store: ArtifactStore, *, image_signature: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    data, x, y = split_bytes()
    split = store.put(f"models/{MODEL}/2/test.npz", data)
    spec = store.put(
        f"models/{MODEL}/2/spec.json",
        json.dumps(
            {  # the trainer's spec.json: the job as submitted, what it learned about the data
                "job": {"name": MODEL, "data": {"source": "builtin", "name": "digits"}},
                "feature_names": [f"pixel_{r}_{c}" for r in range(8) for c in range(8)],
                "architecture": {"n_features": 64, "image_shape": [1, 8, 8]},
            }
        ).encode(),
    )
    shape = [-1, 1, 8, 8] if image_signature else [-1, 64]
    signature = {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": shape}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    }
    scene.versions[MODEL] = [
        version(
            MODEL,
            2,
            artifacts={"test_split": split.model_dump(), "spec": spec.model_dump()},
            signature=signature,
            class_names=[str(i) for i in range(10)],
        ),
        version(MODEL, 3, artifacts={}),
    ]
    return x, y


def check_examples(stack: Stack, x: np.ndarray, y: np.ndarray, shape: list[int]) -> None:
    answer = httpx.get(f"{stack.gallery}/api/gallery/models/{MODEL}/versions/2/examples?n=12", headers=AUTH)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["shape"] == shape and body["image"] is True and body["image_shape"] == [1, 8, 8]
    assert body["class_names"] == [str(i) for i in range(10)] and body["rows"] == 40
    assert body["feature_names"][:2] == ["pixel_0_0", "pixel_0_1"] and len(body["feature_names"]) == 64
    rows = body["examples"]
    assert len(rows) == 12
    assert sorted({r["label"] for r in rows}) == list(range(10)), "every class shows before any shows twice"
    for row in rows:
        sent = np.asarray(row["input"], dtype=np.float32)
        assert list(sent.shape) == shape
        assert np.array_equal(sent.reshape(-1), x[row["index"]]) and row["label"] == int(y[row["index"]])


def test_examples_come_from_the_versions_test_split_in_a_folder_store(scene: Scene, tmp_path: Path) -> None:
    store = open_store((tmp_path / "artifacts").as_uri())
    x, y = register_digits(scene, store)
    with gallery_stack(scene, tmp_path) as running:
        check_examples(running, x, y, [64])
        few = httpx.get(f"{running.gallery}/api/gallery/models/{MODEL}/versions/2/examples?n=3", headers=AUTH).json()
        assert [r["label"] for r in few["examples"]] == [0, 1, 2]
        capped = httpx.get(f"{running.gallery}/api/gallery/models/{MODEL}/versions/2/examples?n=500", headers=AUTH)
        assert len(capped.json()["examples"]) == 40
        none = httpx.get(f"{running.gallery}/api/gallery/models/{MODEL}/versions/3/examples", headers=AUTH)
        assert none.status_code == 404 and none.json() == {
            "error": f"{MODEL}:3 has no test_split artifact in the registry"
        }
        unknown = httpx.get(f"{running.gallery}/api/gallery/models/{MODEL}/versions/9/examples", headers=AUTH)
        assert unknown.status_code == 404
        bad = httpx.get(f"{running.gallery}/api/gallery/models/{MODEL}/versions/2/examples?n=0", headers=AUTH)
        assert bad.status_code == 422


def test_examples_come_from_an_s3_store_in_the_shape_the_model_takes(
    scene: Scene, tmp_path: Path, s3_server: Any
) -> None:
    root = s3_server.new_bucket_uri("gallery")
    s3 = {
        "s3_endpoint": s3_server.endpoint,
        "s3_access_key": s3_server.access_key,
        "s3_secret_key": s3_server.secret_key,
        "s3_secure": False,
    }
    store = open_store(root, GallerySettings(**s3))  # type: ignore[arg-type]
    x, y = register_digits(scene, store, image_signature=True)
    with gallery_stack(scene, tmp_path, artifact_root=root, **s3) as running:
        check_examples(running, x, y, [1, 8, 8])


def test_a_split_that_is_not_an_npz_is_refused_with_its_reason(scene: Scene, tmp_path: Path) -> None:
    store = open_store((tmp_path / "artifacts").as_uri())
    bogus = store.put("models/x/test.npz", b"not a zip at all")
    scene.versions[MODEL] = [version(MODEL, 1, artifacts={"test_split": bogus.model_dump()})]
    with gallery_stack(scene, tmp_path) as running:
        answer = httpx.get(f"{running.gallery}/api/gallery/models/{MODEL}/versions/1/examples", headers=AUTH)
    assert answer.status_code == 422 and "not a readable NPZ file" in answer.json()["error"]


# ---- downloads ------------------------------------------------------------------------------------


def test_a_versions_artifacts_download_checked_and_named_for_the_model(scene: Scene, tmp_path: Path) -> None:
    store = open_store((tmp_path / "artifacts").as_uri())
    onnx = store.put(f"models/{MODEL}/2/model.onnx", b"onnx bytes")
    card = store.put(f"models/{MODEL}/2/card.md", b"---\nlicense: mit\n---\n# digits\n")
    tampered = store.put(f"models/{MODEL}/2/model-int8.onnx", b"int8 bytes")
    forged = tampered.model_dump() | {"sha256": "0" * 64}
    scene.versions[MODEL] = [
        version(MODEL, 2, artifacts={"onnx": onnx.model_dump(), "model-card": card.model_dump(), "int8": forged})
    ]
    base = f"/api/gallery/models/{MODEL}/versions/2/artifacts"
    with gallery_stack(scene, tmp_path) as running, httpx.Client(base_url=running.gallery, headers=AUTH) as http:
        model = http.get(f"{base}/onnx")
        assert model.status_code == 200 and model.content == b"onnx bytes"
        assert model.headers["content-disposition"] == f'attachment; filename="{MODEL}-v2-onnx.onnx"'
        markdown = http.get(f"{base}/model-card")
        assert markdown.headers["content-type"].startswith("text/markdown") and markdown.text.startswith("---")
        corrupt = http.get(f"{base}/int8")
        assert corrupt.status_code == 409 and "sha256" in corrupt.json()["error"], corrupt.text
        missing = http.get(f"{base}/edge_bundle")
        assert missing.status_code == 404 and "holds: int8, model-card, onnx" in missing.json()["error"]
        assert httpx.get(f"{running.gallery}{base}/onnx").status_code == 401
    assert not list((tmp_path / "tmp").glob("download-*")), "no copy is left behind"
