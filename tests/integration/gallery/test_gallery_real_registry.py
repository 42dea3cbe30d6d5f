"""The gallery in front of the real registry (no NATS): its catalogue with the deployer's traffic merged
in, a lineage and held-out examples from what the registry really answers, a card edited through
the proxy with the caller's own token, and `gallery models download` through both."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from gallery_fakes import READER, TOKENS, WRITER, Scene, Stack, deployment, gallery_stack
from typer.testing import CliRunner, Result
from uvicorn_thread import running

from gallery_cli.main import app as cli_app
from gallery_common.artifacts import open_store
from gallery_common.contracts import write_split
from gallery_registry.app import create_app_for
from gallery_registry.deps import RegistryCore
from gallery_registry.schemas import VersionStatus
from gallery_registry.settings import RegistrySettings

ADMIN = "g-admin"
MODEL = "digits-mlp"
ONNX_BYTES = bytes(range(256)) * 700  # stands in for the ONNX file: the download does not read it


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def scene() -> Scene:
    scene = Scene(deployments=[deployment(MODEL, 1, "production", 100.0)])
    scene.runs = [
        {"id": "run-1", "job_id": "job-1", "model": MODEL, "status": "finished", "metrics": {"val_accuracy": 0.96},
         "dataset_fingerprint": "sha256:digits"},
    ]  # fmt: skip
    scene.jobs = [{"id": "job-1", "model": MODEL, "run_id": "run-1", "search_id": None, "trial": None}]
    return scene


@pytest.fixture
def stack(scene: Scene, tmp_path: Path) -> Iterator[Stack]:
    """The real registry with digits-mlp v1 validated and in production, stand-ins for the rest."""
    tokens = f"{TOKENS},{ADMIN}:admin"
    root = (tmp_path / "artifacts").as_uri()
    settings = RegistrySettings(home=tmp_path, api_tokens=tokens, artifact_root=root)  # type: ignore[arg-type]
    app = create_app_for(settings, with_bus=False)
    with running(app, ready_path="/readyz") as server:
        registry = f"http://127.0.0.1:{server.config.port}"
        register_digits(app, registry, root)
        with gallery_stack(scene, tmp_path, tokens=tokens, registry_url=registry) as gallery:
            yield gallery


def register_digits(app: object, registry: str, root: str) -> None:
    store = open_store(root)
    buffer = io.BytesIO()
    x = np.arange(30 * 64, dtype=np.float32).reshape(30, 64) % 17
    write_split(buffer, x, np.arange(30) % 10)
    split = store.put(f"models/{MODEL}/1/test.npz", buffer.getvalue())
    onnx = store.put(f"models/{MODEL}/1/model.onnx", ONNX_BYTES)
    spec = store.put(
        f"models/{MODEL}/1/spec.json", json.dumps({"job": {"data": {"source": "builtin", "name": "digits"}}}).encode()
    )
    with httpx.Client(base_url=registry, headers=bearer(WRITER)) as http:
        created = http.post(
            "/api/v1/models", json={"name": MODEL, "description": "# Digits\n8x8 digits.", "owner": "ann"}
        )
        assert created.status_code == 201, created.text
        version = {
            "task": "classification",
            "class_names": [str(i) for i in range(10)],
            "metrics": {"accuracy": 0.95},
            "lineage": {"dataset_fingerprint": "sha256:digits", "training_job_id": "job-1"},
            "run_id": "run-1",
            "signature": {
                "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 64]}],
                "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
            },
            "artifacts": {
                "onnx": onnx.model_dump(),
                "test_split": split.model_dump(),
                "spec": spec.model_dump(),
            },
        }
        registered = http.post(f"/api/v1/models/{MODEL}/versions", json=version)
        assert registered.status_code == 201, registered.text
        core = app.state.resources.core_as(RegistryCore)  # type: ignore[attr-defined]
        core.store.set_version_status(MODEL, 1, VersionStatus.validating)
        core.store.set_version_status(MODEL, 1, VersionStatus.validated, evaluation_report=None, rejection_reasons=[])
        moved = http.put(f"/api/v1/models/{MODEL}/aliases/production", json={"version": 1}, headers=bearer(ADMIN))
        assert moved.status_code == 200, moved.text


def test_the_catalogue_of_the_real_registry_with_its_traffic(stack: Stack) -> None:
    page = httpx.get(f"{stack.gallery}/api/gallery/catalogue?q=digit", headers=bearer(READER)).json()
    (entry,) = page["models"]
    assert (entry["name"], entry["summary"], entry["owner"]) == (MODEL, "Digits", "ann")
    assert entry["production"]["version"] == 1 and entry["production"]["semver"] == "1.0.0"
    assert entry["deployment"] == {
        "state": "serving",
        "traffic": [{"version": 1, "stage": "production", "percent": 100.0}],
    }
    assert (
        httpx.get(f"{stack.gallery}/api/gallery/catalogue?q=nothing-like-it", headers=bearer(READER)).json()["models"]
        == []
    )


def test_lineage_and_examples_from_the_real_registry(stack: Stack) -> None:
    graph = httpx.get(f"{stack.gallery}/api/gallery/models/{MODEL}/lineage", headers=bearer(READER)).json()
    edges = {(e["source"], e["target"]) for e in graph["edges"]}
    assert {("dataset:sha256:digits", "run:run-1"), ("run:run-1", "version:1")} <= edges
    assert ("version:1", f"deployment:{MODEL}-v1-fp32") in edges
    examples = httpx.get(f"{stack.gallery}/api/gallery/models/{MODEL}/versions/1/examples?n=4", headers=bearer(READER))
    assert examples.status_code == 200, examples.text
    body = examples.json()
    assert body["shape"] == [64] and body["image"] is True and body["image_shape"] == [1, 8, 8]
    assert [row["label"] for row in body["examples"]] == [0, 1, 2, 3]


def test_a_card_edited_through_the_proxy_needs_a_writer_at_the_registry(stack: Stack) -> None:
    card = f"{stack.gallery}/api/registry/api/v1/models/{MODEL}/card"
    text = {"intended_use": "Reading handwritten digits in forms."}
    refused = httpx.put(card, json=text, headers=bearer(READER))
    assert refused.status_code == 403 and "writer" in refused.json()["error"]
    edited = httpx.put(card, json=text, headers=bearer(WRITER))
    assert edited.status_code == 200, edited.text
    assert httpx.get(card, headers=bearer(READER)).json()["intended_use"] == text["intended_use"]
    assert httpx.get(card).status_code == 401


# ---- gallery models download ---------------------------------------------------------------------


def download(stack: Stack, *args: str, token: str = READER) -> Result:
    return models(stack, "download", *args, token=token)


def models(stack: Stack, *args: str, token: str = READER) -> Result:
    registry = stack.services["registry"]
    env = {"GALLERY_REGISTRY_URL": registry, "GALLERY_GALLERY_URL": stack.gallery, "GALLERY_TOKEN": token}
    return CliRunner().invoke(cli_app, ["models", *args], env=env)


def test_a_shown_version_lists_its_artifacts_and_how_to_download_one(stack: Stack) -> None:
    shown = models(stack, "show", f"{MODEL}:1")
    assert shown.exit_code == 0, shown.output
    assert f"{MODEL} version 1 (1.0.0)  status validated  aliases production" in shown.output
    rows = shown.output.splitlines()
    for role in ("onnx", "spec", "test_split"):
        assert any(row.startswith(f"│ {role} ") for row in rows), f"no {role} row:\n{shown.output}"
    assert f"download one: gallery models download {MODEL}:1 --role ROLE" in shown.output


def test_a_versions_onnx_is_downloaded_checked_and_named_for_the_model(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    done = download(stack, MODEL, "-o", str(folder))  # production's version, the ONNX file
    assert done.exit_code == 0, done.output
    saved = folder / f"{MODEL}-v1-onnx.onnx"
    assert saved.read_bytes() == ONNX_BYTES
    assert f"{MODEL}:1 onnx: {len(ONNX_BYTES)} bytes" in done.output and "checked" in done.output
    assert sorted(p.name for p in folder.iterdir()) == [saved.name], "no partial file is left"

    again = download(stack, f"{MODEL}:1", "-o", str(folder))
    assert again.exit_code == 1 and "is there already (--force replaces it)" in again.output
    saved.write_bytes(b"an older copy")
    replaced = download(stack, f"{MODEL}@production", "-o", str(folder), "--force")
    assert replaced.exit_code == 0, replaced.output
    assert saved.read_bytes() == ONNX_BYTES

    split = tmp_path / "held-out.npz"
    done = download(stack, f"{MODEL}:1", "--role", "test_split", "-o", str(split))
    assert done.exit_code == 0, done.output
    assert hashlib.sha256(split.read_bytes()).hexdigest() == _held(stack, "test_split")["sha256"]


def test_a_download_that_cannot_be_checked_leaves_nothing(stack: Stack, tmp_path: Path) -> None:
    missing = download(stack, f"{MODEL}:1", "--role", "int8", "-o", str(tmp_path))
    assert missing.exit_code == 1
    assert f"{MODEL}:1 has no 'int8' artifact (it holds: onnx, spec, test_split)" in missing.output

    # the stored bytes changed after they were registered: the gallery refuses to send them
    Path(_held(stack, "onnx")["uri"].removeprefix("file://")).write_bytes(b"not what was registered")
    tampered = download(stack, f"{MODEL}:1", "-o", str(tmp_path))
    assert tampered.exit_code == 1 and "(409)" in tampered.output, tampered.output
    assert list(tmp_path.glob("*onnx*")) == [] and list(tmp_path.glob(".*part")) == []

    refused = download(stack, f"{MODEL}:1", "-o", str(tmp_path), token="no-such-token")
    assert refused.exit_code == 1 and "(401)" in refused.output


def _held(stack: Stack, role: str) -> dict[str, str]:
    version = httpx.get(f"{stack.services['registry']}/api/v1/models/{MODEL}/versions/1", headers=bearer(READER))
    return dict(version.json()["artifacts"][role])
