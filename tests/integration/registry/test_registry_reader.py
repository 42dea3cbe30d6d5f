"""`RegistryReader`, the registry's reads, answer the same in process (the store) and over REST (the
services' `RegistryClient` against a registry served on loopback): one contract, run against both."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from registry_uvicorn import serve_registry

from gallery_common.contracts.registry import ArtifactRole, RegistryReader, VersionStatus
from gallery_common.errors import NotFound
from gallery_common.events import ArtifactRef
from gallery_common.netutil import free_port
from gallery_common.registry_client import RegistryClient
from gallery_registry.settings import RegistrySettings
from gallery_registry.store import RegistryStore, open_registry

ADMIN = "reader-admin"
ONNX = ArtifactRef(uri="file:///a/digits.onnx", sha256="a" * 64, size=1200, format="onnx")
TRAIN = ArtifactRef(uri="file:///a/train.npz", sha256="b" * 64, size=300, format="npz")
INT8 = ArtifactRef(uri="file:///a/digits.int8.onnx", sha256="c" * 64, size=400, format="onnx")


@dataclass
class Registry:
    store: RegistryStore
    client: RegistryClient


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A served registry holding digits:1 (validated, production, with a variant) and digits:2 (pending)."""
    settings = RegistrySettings(home=tmp_path, port=free_port(), api_tokens=f"{ADMIN}:admin")  # type: ignore[arg-type]
    with serve_registry(settings) as url:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}) as http:
            http.post(
                "/api/v1/models", json={"name": "digits", "owner": "ann", "tags": {"team": "cv"}}
            ).raise_for_status()
            for run in ("run-1", "run-2"):
                version = {
                    "run_id": run,
                    "metrics": {"accuracy": 0.93},
                    "tags": {"data": "mnist"},
                    "class_names": [str(c) for c in range(10)],
                    "lineage": {"training_job_id": f"job-{run}", "dataset_fingerprint": "d" * 16},
                    "signature": {
                        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 64]}],
                        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
                    },
                    "artifacts": {
                        "onnx": ONNX.model_dump(mode="json"),
                        "train_split": TRAIN.model_dump(mode="json"),
                    },
                }
                http.post("/api/v1/models/digits/versions", json=version).raise_for_status()
            http.patch("/api/v1/models/digits/versions/1", json={"status": "validating"}).raise_for_status()
            http.patch("/api/v1/models/digits/versions/1", json={"status": "validated"}).raise_for_status()
            http.put("/api/v1/models/digits/aliases/production", json={"version": 1}).raise_for_status()
        client = RegistryClient(url, ADMIN, retry_delays=())
        client.attach_artifact("digits", 1, "int8", INT8)
        store = open_registry(settings.resolved_database_url, migrate=False)
        try:
            yield Registry(store, client)
        finally:
            client.close()
            store.engine.dispose()


def test_the_rest_client_and_the_store_read_the_same_models(registry: Registry) -> None:
    store, client = registry.store, registry.client
    for number in (1, 2):
        assert client.get_version("digits", number) == store.get_version("digits", number)
    assert client.get_version_by_alias("digits", "production") == store.get_version_by_alias("digits", "production")
    assert client.get_model("digits") == store.get_model("digits")


@pytest.mark.parametrize("way_in", ["store", "client"])
def test_a_version_reads_as_the_registry_recorded_it(registry: Registry, way_in: str) -> None:
    reader: RegistryReader = registry.store if way_in == "store" else registry.client
    version = reader.get_version("digits", 1)
    assert (version.status, version.aliases, version.class_names) == (
        VersionStatus.validated,
        ["production"],
        [str(c) for c in range(10)],
    )
    assert set(version.artifacts) == {ArtifactRole.onnx, ArtifactRole.train_split, ArtifactRole.int8}
    assert version.artifact("int8") == INT8 and version.artifact("onnx") == ONNX
    assert version.artifact("fp16") is None and version.artifact("no-such-role") is None
    assert version.holds(TRAIN) and not version.holds(TRAIN.model_copy(update={"sha256": "e" * 64}))
    assert version.signature is not None and version.signature.inputs[0].shape == [-1, 64]
    assert reader.get_version_by_alias("digits", "production").version == 1
    assert reader.get_model("digits").latest_version == 2


@pytest.mark.parametrize("way_in", ["store", "client"])
def test_what_the_registry_does_not_hold_is_not_found(registry: Registry, way_in: str) -> None:
    reader: RegistryReader = registry.store if way_in == "store" else registry.client
    with pytest.raises(NotFound):
        reader.get_version("digits", 9)
    with pytest.raises(NotFound):
        reader.get_version_by_alias("digits", "staging")
    with pytest.raises(NotFound):
        reader.get_model("nope")
