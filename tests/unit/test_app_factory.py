from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from gallery_common.app import ServiceResources, Startup, create_app
from gallery_common.auth import body_limit
from gallery_common.deps import AdminDep, CallerDep, get_resources
from gallery_common.errors import Conflict, Unavailable
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

    @router.get("/database-down")
    def database_down() -> None:
        refused = ConnectionRefusedError("connection to 10.0.0.5:5432 refused")
        raise sa.exc.OperationalError("SELECT secret FROM widgets", {}, refused)

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

        # a database restart is an outage the client waits out: 503 and when to try again, no internals
        down = client.get("/api/v1/database-down")
        assert (down.status_code, down.headers["Retry-After"]) == (503, "1")
        assert down.json() == {"error": "the database is unavailable; try again shortly"}


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


class Shelf:
    """A service core: what a startup builds and routes read."""

    def __init__(self, widgets: list[str]) -> None:
        self.widgets = widgets


def shelf_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1")

    @router.get("/shelf")
    def shelf(request: Request) -> list[str]:
        return get_resources(request).core_as(Shelf).widgets

    return router


def make_shelf_app(tmp_path: Path, startup: Startup) -> FastAPI:
    settings = GallerySettings(home=tmp_path, service_name="shelf")
    return create_app(
        settings, title="shelf", routers=[shelf_router()], use_bus=False, use_database=True, startup=startup
    )


def test_routes_read_the_core_the_startup_returned_and_shutdown_stops_it_in_reverse_order(tmp_path: Path) -> None:
    stopped: list[str] = []
    seen_while_stopping: list[tuple[object, bool]] = []

    async def startup(resources: ServiceResources, stack: AsyncExitStack) -> Shelf:
        assert resources.engine is not None  # opened before the service's own parts
        stack.callback(stopped.append, "worker")

        async def stop_consumer() -> None:
            seen_while_stopping.append((resources.core, app.state.started))
            stopped.append("consumer")

        stack.push_async_callback(stop_consumer)
        return Shelf(["bolt", "nut"])

    app = make_shelf_app(tmp_path, startup)
    with TestClient(app) as client:
        assert client.get("/api/v1/shelf").json() == ["bolt", "nut"]
        assert client.get("/readyz").status_code == 200
        assert stopped == []
    resources: ServiceResources = app.state.resources
    assert stopped == ["consumer", "worker"]
    # routes answer 503 and /readyz "not ready" before the first part stops
    assert seen_while_stopping == [(None, False)]
    with pytest.raises(Unavailable, match="the shelf is starting or stopping"):
        resources.core_as(Shelf)


def test_a_startup_that_fails_half_way_stops_what_it_had_started(tmp_path: Path) -> None:
    stopped: list[str] = []

    async def startup(resources: ServiceResources, stack: AsyncExitStack) -> Shelf:
        stack.callback(stopped.append, "worker")
        stack.callback(stopped.append, "consumer")
        raise RuntimeError("the schema moved on")

    app = make_shelf_app(tmp_path, startup)
    with pytest.raises(RuntimeError, match="the schema moved on"), TestClient(app):
        pass
    assert stopped == ["consumer", "worker"]
    assert app.state.started is False


def test_a_core_of_another_kind_is_refused(tmp_path: Path) -> None:
    async def startup(resources: ServiceResources, stack: AsyncExitStack) -> object:
        return ["not", "a", "shelf"]

    with TestClient(make_shelf_app(tmp_path, startup), raise_server_exceptions=False) as client:
        refused = client.get("/api/v1/shelf")
    assert refused.status_code == 503
    assert refused.json() == {"error": "the shelf is starting or stopping"}


def test_a_route_whose_body_limit_names_no_setting_stops_the_app_as_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misspelt `auth.body_limit` is found at start, naming the route and the field, not as a 500 on every
    request to the route; a correct one starts and limits that route alone."""
    monkeypatch.setenv("GALLERY_HOME", str(tmp_path))
    monkeypatch.setenv("GALLERY_MAX_BODY_BYTES", "10")

    def upload_router(setting: str) -> APIRouter:
        router = APIRouter()

        @router.post("/uploads")
        @body_limit(setting)
        async def upload(request: Request) -> dict[str, int]:
            return {"bytes": len(await request.body())}

        return router

    settings = load_settings(GallerySettings)
    misspelt = create_app(settings, title="t", routers=[upload_router("max_body_byte")], use_bus=False)
    named = "'/uploads' takes its body limit from the settings field 'max_body_byte'"
    with pytest.raises(ValueError, match=named), TestClient(misspelt):
        pass
    # a field that is there but is not a byte count is refused as well
    not_bytes = create_app(settings, title="t", routers=[upload_router("service_name")], use_bus=False)
    with pytest.raises(ValueError, match="'service_name'"), TestClient(not_bytes):
        pass
    monkeypatch.setenv("GALLERY_PORT", "1234")  # GallerySettings' port: a number, used here as a 1234-byte limit
    settings = load_settings(GallerySettings)
    with TestClient(create_app(settings, title="t", routers=[upload_router("port")], use_bus=False)) as client:
        assert client.post("/uploads", content=b"x" * 100).json() == {"bytes": 100}  # over the app's 10 bytes
        assert client.post("/uploads", content=b"x" * 2000).status_code == 413
