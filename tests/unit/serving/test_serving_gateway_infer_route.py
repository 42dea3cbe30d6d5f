"""The gateway infers through one implementation, the fast path's endpoint, and still documents it."""

from __future__ import annotations

from pathlib import Path

from fastapi.routing import APIRoute
from starlette.routing import Route

from gallery_common.access import AccessPolicy
from gallery_common.settings import Role
from gallery_deployer.gateway import api
from gallery_deployer.gateway.app import create_app_for
from gallery_deployer.gateway.fastpath import infer
from gallery_deployer.gateway.settings import GatewaySettings

INFER_PATHS = ("/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer")


def test_every_infer_route_is_the_fast_path_endpoint_and_needs_the_inference_role() -> None:
    posts = [route for route in api.oip.routes if "POST" in (getattr(route, "methods", None) or ())]
    infers = [route for route in posts if route.path.endswith("/infer")]  # type: ignore[attr-defined]
    assert [route.path for route in infers] == list(INFER_PATHS)  # type: ignore[attr-defined]
    assert all(isinstance(route, Route) and not isinstance(route, APIRoute) for route in infers)
    assert all(route.endpoint is infer for route in infers)  # type: ignore[attr-defined]
    policy = AccessPolicy([api.oip])
    # explanations are not the hot path (FastAPI routes), but need the same role
    for path in ("/v2/models/iris/infer", "/v2/models/iris/versions/3/infer", "/v2/models/iris/explain"):
        rule = policy.match("POST", path)
        assert rule is not None and rule.needed("POST") is Role.inference


def test_the_openapi_document_still_lists_inference(tmp_path: Path) -> None:
    app = create_app_for(GatewaySettings(home=tmp_path), with_bus=False)
    paths = app.openapi()["paths"]
    for path in INFER_PATHS:
        operation = paths[path]["post"]
        assert operation["tags"] == ["inference (OIP v2)"]
        assert {"200", "413"} <= set(operation["responses"])
        assert "application/octet-stream" in operation["requestBody"]["content"]
    assert "/admin/routes/{model}" in paths and "/v2/models/{model}/ready" in paths
