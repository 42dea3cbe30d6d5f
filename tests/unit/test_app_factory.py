from pathlib import Path

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from pydantic import BaseModel

from gallery_common.app import create_app
from gallery_common.deps import AdminDep, CallerDep
from gallery_common.errors import Conflict
from gallery_common.settings import GallerySettings, load_settings


class Widget(BaseModel):
    name: str
    size: int


def widget_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1")

    @router.get("/widgets/{name}")
    def get_widget(name: str, caller: CallerDep) -> dict[str, str]:
        return {"name": name, "caller": caller.name}

    @router.post("/widgets")
    def create_widget(widget: Widget) -> Widget:
        if widget.name == "taken":
            raise Conflict("widget 'taken' already exists")
        return widget

    @router.delete("/widgets/{name}")
    def delete_widget(name: str, caller: AdminDep) -> dict[str, str]:
        return {"deleted": name, "by": caller.name}

    @router.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    return router


def make_client(tmp_path: Path, tokens: str | None, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("GALLERY_HOME", str(tmp_path))
    if tokens:
        monkeypatch.setenv("GALLERY_API_TOKENS", tokens)
    settings = load_settings(GallerySettings, service_name="widgets")
    app = create_app(
        settings, title="widgets", routers=[widget_router()], use_bus=False, use_store=True, use_database=True
    )
    return TestClient(app, raise_server_exceptions=False)


def test_health_readiness_and_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with make_client(tmp_path, None, monkeypatch) as client:
        assert client.get("/healthz").json() == {"status": "ok", "service": "widgets"}
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"artifacts": "ok", "database": "ok"}
        client.get("/api/v1/widgets/a")
        metrics = client.get("/metrics").text
        assert 'modelgallery_http_requests_total{method="GET",route="/api/v1/widgets/{name}"' in metrics
        assert "modelgallery_http_request_duration_seconds_bucket" in metrics
    assert (tmp_path / "widgets.db").exists()


def test_errors_are_json_with_the_right_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with make_client(tmp_path, None, monkeypatch) as client:
        conflict = client.post("/api/v1/widgets", json={"name": "taken", "size": 1})
        assert conflict.status_code == 409
        assert conflict.json() == {"error": "widget 'taken' already exists"}

        invalid = client.post("/api/v1/widgets", json={"name": "w", "size": "huge"})
        assert invalid.status_code == 422
        assert "size" in invalid.json()["error"]

        crash = client.get("/api/v1/boom")
        assert crash.status_code == 500
        assert "secret internals" not in crash.text
        assert client.get("/nowhere").json() == {"error": "Not Found"}


def test_roles_gate_reads_writes_and_admin_routes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = "read-tok:reader,write-tok:writer,admin-tok:admin"
    with make_client(tmp_path, tokens, monkeypatch) as client:

        def bearer(token: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {token}"}

        missing = client.get("/api/v1/widgets/a")
        assert missing.status_code == 401
        assert "bearer token" in missing.json()["error"]
        assert client.get("/api/v1/widgets/a", headers=bearer("wrong")).status_code == 401
        assert client.get("/healthz").status_code == 200

        read = client.get("/api/v1/widgets/a", headers=bearer("read-tok"))
        assert read.status_code == 200
        assert read.json()["caller"].startswith("reader-")

        denied = client.post("/api/v1/widgets", json={"name": "w", "size": 1}, headers=bearer("read-tok"))
        assert denied.status_code == 403
        assert "writer" in denied.json()["error"]
        assert client.post("/api/v1/widgets", json={"name": "w", "size": 1}, headers=bearer("write-tok")).is_success

        assert client.delete("/api/v1/widgets/w", headers=bearer("write-tok")).status_code == 403
        assert client.delete("/api/v1/widgets/w", headers=bearer("admin-tok")).json()["by"].startswith("admin-")
