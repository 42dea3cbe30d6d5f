"""The stand-in monitor answers the real monitor's contract: same read routes, same response schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from monitor_contract_standin import demo_scene, standin_app

from gallery_monitor.app import create
from gallery_monitor.routes import router
from gallery_monitor.settings import MonitorSettings


def read_contract(app: FastAPI) -> dict[str, Any]:
    spec = app.openapi()
    return {
        path: (ops["get"]["responses"]["200"]["content"]["application/json"]["schema"], spec["components"]["schemas"])
        for path, ops in spec["paths"].items()
        if path.startswith("/api/v1") and "get" in ops
    }


def resolved(schema: Any, components: dict[str, Any]) -> Any:
    """The schema with every `$ref` replaced by what it names and titles (named after the route's function)
    left out, so two apps' specs compare by shape."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return resolved(components[schema["$ref"].rsplit("/", 1)[-1]], components)
        return {key: resolved(value, components) for key, value in schema.items() if key != "title"}
    if isinstance(schema, list):
        return [resolved(item, components) for item in schema]
    return schema


def test_the_standin_answers_every_read_route_of_the_monitor_with_its_schema(tmp_path: Path) -> None:
    real = FastAPI()
    real.include_router(router)
    monitor = read_contract(real)
    standin = read_contract(standin_app(demo_scene(), tmp_path))
    assert sorted(standin) == sorted(monitor)
    for path, (schema, components) in monitor.items():
        assert resolved(standin[path][0], standin[path][1]) == resolved(schema, components), path


def test_the_monitor_serves_no_page_of_its_own(tmp_path: Path) -> None:
    """Its page is the Gallery's Monitoring view now (services/gallery): the monitor answers its API only."""
    app = create(MonitorSettings(home=tmp_path))
    client = TestClient(app)  # no lifespan: routing only
    for address in ("/", "/static/app.js", "/static/index.html"):
        assert client.get(address).status_code == 404, address
