"""The gateway's inference route, served without FastAPI's routing and dependency machinery.

At 64 concurrent clients FastAPI's per-request work (route matching, dependency solving, request
objects) cost the gateway about three quarters of its CPU. `POST /v2/models/{model}[/versions/{v}]/infer`
is the one hot path, so it has one implementation, `InferEndpoint`, a plain ASGI app over `Gateway.infer`.
Its routes (`INFER_ROUTES`) sit in the OIP router: the app's `AccessMiddleware` reads from them the
`inference` role they need and the template the HTTP metrics report, checks the token and limits the
body the endpoint reads (GALLERY_MAX_BODY_BYTES). `InferFastPath`, behind the access checks, hands
those requests to the endpoint before FastAPI's routing sees them; every other request goes on to
the FastAPI app. FastAPI documents only its own routes, so `document_inference` adds these to the
OpenAPI document.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gallery_common.access import read_body
from gallery_common.app import ServiceResources, gallery_error_response
from gallery_common.auth import ROLE_ATTRIBUTE
from gallery_common.contracts.oip import INFERENCE_HEADER_LENGTH
from gallery_common.errors import GalleryError
from gallery_common.settings import Role

from .proxy import Gateway

OIP_TAG = "inference (OIP v2)"
INFER = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")


def is_inference(scope: MutableMapping[str, Any]) -> bool:
    """True for the requests this fast path answers."""
    return scope["type"] == "http" and scope.get("method") == "POST" and INFER.match(scope["path"]) is not None


class InferEndpoint:
    """Forwards an infer request, as bytes, to the backend the model's traffic policy picks."""

    def __init__(self) -> None:
        # read by AccessMiddleware, which checks it before a byte of the body is read
        setattr(self, ROLE_ATTRIBUTE, Role.inference)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = INFER.match(scope["path"])
        assert match is not None, "routed here by INFER_ROUTES or InferFastPath"
        headers = Headers(scope=scope)
        try:
            body = await read_body(receive)
            resources: ServiceResources = scope["app"].state.resources
            gateway = resources.core_as(Gateway)
            cookies = cookie_parser(headers.get("cookie", ""))
            response = await gateway.infer(match["model"], match["version"], scope["path"], body, headers, cookies)
        except GalleryError as exc:
            response = gallery_error_response(exc)
        await response(scope, receive, send)


infer = InferEndpoint()

INFER_ROUTES = [
    Route(path, infer, methods=["POST"], name=name, include_in_schema=False)
    for path, name in (
        ("/v2/models/{model}/infer", "infer"),
        ("/v2/models/{model}/versions/{version}/infer", "infer_version"),
    )
]


class InferFastPath:
    """Serves inference requests with `infer` itself and hands everything else to `app`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and INFER.match(scope["path"]) is not None:
            await infer(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _error_answer(description: str) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _infer_operation(operation_id: str, versioned: bool) -> dict[str, Any]:
    parameters = [{"name": "model", "in": "path", "required": True, "schema": {"type": "string", "title": "Model"}}]
    if versioned:
        parameters.append({"name": "version", "in": "path", "required": True, "schema": {"type": "string"}})
    return {
        "post": {
            "tags": [OIP_TAG],
            "summary": "Infer Version" if versioned else "Infer",
            "description": (
                "Forwarded as bytes to the backend the traffic policy picks: an OIP v2 infer request, as JSON "
                f"or with Triton's binary tensors (`{INFERENCE_HEADER_LENGTH}`). Needs the `inference` role; "
                "a body over GALLERY_MAX_BODY_BYTES is refused with 413 before it is read."
            ),
            "operationId": operation_id,
            "parameters": parameters,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            "responses": {
                "200": {
                    "description": "The backend's answer",
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                "400": _error_answer("The backend refused the request (its reason)"),
                "401": _error_answer("No or an unknown bearer token"),
                "403": _error_answer("The token lacks the inference role"),
                "404": _error_answer("The model, or that version of it, has no route"),
                "413": _error_answer("The body is over GALLERY_MAX_BODY_BYTES"),
                "502": _error_answer("Every backend failed; one answered 5xx"),
                "503": _error_answer("No backend could answer"),
            },
        }
    }


def document_inference(app: FastAPI) -> None:
    """Add the infer operations to `app`'s OpenAPI document, which FastAPI builds from its own routes only."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema["paths"]["/v2/models/{model}/infer"] = _infer_operation(
                "infer_v2_models__model__infer_post", versioned=False
            )
            schema["paths"]["/v2/models/{model}/versions/{version}/infer"] = _infer_operation(
                "infer_version_v2_models__model__versions__version__infer_post", versioned=True
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the document
