"""An unmodified `mlflow.MlflowClient` against the registry served by uvicorn on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.utils.models import get_model_name_and_version
from registry_uvicorn import serve_registry

from gallery_common.netutil import free_port
from gallery_registry.settings import RegistrySettings

WRITER, ADMIN = "mlflow-writer", "mlflow-admin"


@pytest.fixture(scope="module")
def registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = RegistrySettings(
        home=tmp_path_factory.mktemp("registry"),
        port=free_port(),
        api_tokens=f"{WRITER}:writer,{ADMIN}:admin",  # type: ignore[arg-type]
    )
    with serve_registry(settings) as url:
        yield url


@pytest.fixture
def client(registry_url: str, monkeypatch: pytest.MonkeyPatch) -> mlflow.MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", WRITER)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    # mlflow's module-level helpers (download_artifacts) use these, not the client's URIs
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry_url)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", registry_url)
    return mlflow.MlflowClient(tracking_uri=registry_url, registry_uri=registry_url)


@pytest.fixture
def name() -> str:
    return f"digits-{uuid.uuid4().hex[:8]}"


def error_code(call: object) -> str:
    assert callable(call)
    with pytest.raises(MlflowException) as info:
        call()
    return info.value.error_code


def test_models_versions_and_aliases(client: mlflow.MlflowClient, name: str, tmp_path: Path) -> None:
    created = client.create_registered_model(name, tags={"team": "cv"}, description="digits")
    assert (created.name, created.description, created.tags) == (name, "digits", {"team": "cv"})
    assert error_code(lambda: client.create_registered_model(name)) == "RESOURCE_ALREADY_EXISTS"

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "MLmodel").write_text("flavors: {}\n")
    first = client.create_model_version(name, source=model_dir.as_uri(), run_id="run-1", tags={"k": "v"})
    second = client.create_model_version(name, source="s3://bucket/run-2/model", run_id="run-2")
    assert (first.version, second.version) == ("1", "2")
    assert first.status == "READY" and first.tags == {"k": "v"} and first.run_id == "run-1"

    client.set_registered_model_alias(name, "champion", "1")
    by_alias = client.get_model_version_by_alias(name, "champion")
    assert (by_alias.version, by_alias.source, by_alias.aliases) == ("1", model_dir.as_uri(), ["champion"])
    assert client.get_registered_model(name).aliases == {"champion": "1"}
    assert get_model_name_and_version(client, f"models:/{name}@champion") == (name, "1")
    assert get_model_name_and_version(client, f"models:/{name}/latest") == (name, "2")
    assert client.get_model_version_download_uri(name, "2") == "s3://bucket/run-2/model"

    # models:/NAME@ALIAS resolves through the registry to the version's files
    downloaded = mlflow.artifacts.download_artifacts(f"models:/{name}@champion", dst_path=str(tmp_path / "dl"))
    assert (Path(downloaded) / "MLmodel").read_text() == "flavors: {}\n"

    client.set_registered_model_alias(name, "champion", "2")
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    client.delete_registered_model_alias(name, "champion")
    assert error_code(lambda: client.get_model_version_by_alias(name, "champion")) == "RESOURCE_DOES_NOT_EXIST"


def test_search_update_tags_and_delete(client: mlflow.MlflowClient, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client.create_registered_model(name)
    client.create_registered_model(f"{name}-b")
    for run in ("r1", "r2", "r3"):
        client.create_model_version(name, source=f"s3://bucket/{run}", run_id=run)

    found = client.search_registered_models(filter_string=f"name LIKE '{name}%'", order_by=["name DESC"])
    assert [m.name for m in found] == [f"{name}-b", name]
    first_page = client.search_registered_models(filter_string=f"name LIKE '{name}%'", max_results=1)
    assert len(first_page) == 1 and first_page.token
    rest = client.search_registered_models(filter_string=f"name LIKE '{name}%'", page_token=first_page.token)
    assert [m.name for m in first_page] + [m.name for m in rest] == [name, f"{name}-b"]
    assert [m.name for m in client.search_registered_models(filter_string=f"name = '{name}-b'")] == [f"{name}-b"]

    versions = client.search_model_versions(f"name = '{name}'")
    assert sorted(v.version for v in versions) == ["1", "2", "3"]
    assert [v.version for v in client.search_model_versions(f"name = '{name}' AND run_id = 'r2'")] == ["2"]

    assert client.update_registered_model(name, description="new").description == "new"
    assert client.update_model_version(name, "1", description="v1").description == "v1"
    client.set_registered_model_tag(name, "stage", "beta")
    client.set_model_version_tag(name, "1", "checked", "yes")
    assert client.get_registered_model(name).tags == {"stage": "beta"}
    assert client.get_model_version(name, "1").tags == {"checked": "yes"}
    assert [v.version for v in client.search_model_versions(f"name = '{name}' AND tags.checked = 'yes'")] == ["1"]
    client.delete_registered_model_tag(name, "stage")
    client.delete_model_version_tag(name, "1", "checked")
    assert client.get_registered_model(name).tags == {}
    assert client.get_model_version(name, "1").tags == {}

    # deletions are admin operations, refused in MLflow's shape to a writer
    assert error_code(lambda: client.delete_model_version(name, "1")) == "PERMISSION_DENIED"
    assert error_code(lambda: client.delete_registered_model(name)) == "PERMISSION_DENIED"
    assert client.get_model_version(name, "1").version == "1"
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", ADMIN)
    client.delete_model_version(name, "1")
    assert error_code(lambda: client.get_model_version(name, "1")) == "RESOURCE_DOES_NOT_EXIST"
    client.delete_registered_model(name)
    assert error_code(lambda: client.get_registered_model(name)) == "RESOURCE_DOES_NOT_EXIST"


def test_errors_raise_the_client_exceptions(client: mlflow.MlflowClient, name: str) -> None:
    assert error_code(lambda: client.get_registered_model("missing-model")) == "RESOURCE_DOES_NOT_EXIST"
    assert error_code(lambda: client.create_model_version("missing-model", source="s3://b/x")) == (
        "RESOURCE_DOES_NOT_EXIST"
    )
    client.create_registered_model(name)
    assert error_code(lambda: client.get_model_version(name, "7")) == "RESOURCE_DOES_NOT_EXIST"
    assert error_code(lambda: client.set_registered_model_alias(name, "staging", "7")) == "RESOURCE_DOES_NOT_EXIST"
    bad_filter = error_code(lambda: client.search_registered_models(filter_string="owner = 'x'"))
    assert bad_filter == "INVALID_PARAMETER_VALUE"
    with pytest.raises(MlflowException, match="unsupported filter clause owner"):
        client.search_registered_models(filter_string="owner = 'x'")
    assert error_code(lambda: client.create_registered_model("bad name")) == "INVALID_PARAMETER_VALUE"
    assert error_code(lambda: client.delete_registered_model_tag(name, "absent")) == "RESOURCE_DOES_NOT_EXIST"


def test_protected_alias_needs_the_admin_token(
    client: mlflow.MlflowClient, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.create_registered_model(name)
    client.create_model_version(name, source="s3://b/m")
    assert error_code(lambda: client.set_registered_model_alias(name, "production", "1")) == "PERMISSION_DENIED"
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", ADMIN)
    client.set_registered_model_alias(name, "production", "1")
    assert client.get_model_version_by_alias(name, "production").version == "1"
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "wrong")
    assert error_code(lambda: client.get_registered_model(name)) == "UNAUTHENTICATED"
