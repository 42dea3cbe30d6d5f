"""The gateway's inference route, answered before FastAPI and its middleware see the request.

`POST /v2/models/{model}[/versions/{v}]/infer` is the one hot path, and a proxy should cost less than the
server it fronts: FastAPI's per-request work (its telemetry hooks, the error, metrics and access
middlewares, routing, request and response objects) cost the gateway about as much CPU as forwarding the
request. `GatewayApp` hands these requests to `InferEndpoint`, which does what that stack would: the same
access check as every route (`access.admit`: the `inference` role, GALLERY_MAX_BODY_BYTES before a byte
is read and while the body streams in), the body as bytes to `Gateway.infer`, domain errors as
`{"error": ...}` with their status, an unexpected error logged and answered 500, and the HTTP request
metrics under the route's template. Inference opens no trace span (sampling it would cost every request).
The infer routes (`INFER_ROUTES`) sit in the OIP router with the same endpoint, so the access policy and
the route table still name them; FastAPI documents only its own routes, so `document_inference` adds them
to the OpenAPI document.
"""

from __future__ import annotations

import re
import time
from collections.abc import MutableMapping
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.requests import cookie_parser
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gallery_common.access import admit, gallery_error_response, read_body, route_path
from gallery_common.app import HTTP_DURATION, HTTP_REQUESTS, ServiceResources
from gallery_common.auth import CALLER_SCOPE_KEY, ROLE_ATTRIBUTE
from gallery_common.contracts.oip import INFERENCE_HEADER_LENGTH
from gallery_common.contracts.request_ids import REQUEST_ID_HEADER, checked_request_id, new_request_id
from gallery_common.errors import GalleryError
from gallery_common.settings import Role
from gallery_common.telemetry import get_logger

from .metrics import bound
from .proxy import Gateway

log = get_logger(__name__)

OIP_TAG = "inference (OIP v2)"
INFER = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
INFER_PATH = "/v2/models/{model}/infer"
INFER_VERSION_PATH = "/v2/models/{model}/versions/{version}/infer"

Reply = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, raw headers, body
_REQUEST_ID = REQUEST_ID_HEADER.encode("latin-1")


def is_inference(scope: MutableMapping[str, Any]) -> bool:
    """True for the requests this fast path answers."""
    return scope["type"] == "http" and scope.get("method") == "POST" and INFER.match(route_path(scope)) is not None


def _request_headers(scope: Scope) -> dict[str, str]:
    # ASGI servers give header names in lower case
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


def _rendered(response: JSONResponse) -> Reply:
    return response.status_code, response.raw_headers, bytes(response.body)


class InferEndpoint:
    """Forwards an infer request, as bytes, to the backend the model's traffic policy picks, and answers it."""

    def __init__(self) -> None:
        # the role the access policy reads off the infer routes
        setattr(self, ROLE_ATTRIBUTE, Role.inference)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = INFER.match(route_path(scope))
        assert match is not None, "routed here by INFER_ROUTES or GatewayApp"
        await self.serve(scope, receive, send, match)

    async def serve(self, scope: Scope, receive: Receive, send: Send, match: re.Match[str]) -> None:
        started = time.perf_counter()
        resources: ServiceResources = scope["app"].state.resources
        try:
            status, headers, body = await self._reply(scope, receive, match, resources)
        except Exception as exc:  # what the app's error middleware does for every other route
            log.error("unhandled error", path=scope["path"], exc_info=exc)
            status, headers, body = _rendered(
                JSONResponse({"error": "internal error; the service log has the details"}, 500)
            )
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        template = INFER_PATH if match["version"] is None else INFER_VERSION_PATH
        service = resources.settings.service_name
        bound(HTTP_REQUESTS, service, "POST", template, str(status)).inc()
        bound(HTTP_DURATION, service, "POST", template).observe(time.perf_counter() - started)

    @staticmethod
    async def _reply(scope: Scope, receive: Receive, match: re.Match[str], resources: ServiceResources) -> Reply:
        settings = resources.settings
        request_id = None
        try:
            body = admit(settings, scope, receive, Role.inference, settings.max_body_bytes)
            data = await read_body(body.receive)
            gateway = resources.core_as(Gateway)
            headers = _request_headers(scope)
            given = headers.get(REQUEST_ID_HEADER)
            request_id = new_request_id() if given is None else checked_request_id(given)
            cookie = headers.get("cookie")
            cookies = cookie_parser(cookie) if cookie else {}
            caller = scope[CALLER_SCOPE_KEY]
            answer = await gateway.infer(
                match["model"], match["version"], scope["path"], data, headers, cookies, caller, request_id
            )
        except GalleryError as exc:
            status, raw, content = _rendered(gallery_error_response(exc))
            return status, raw if request_id is None else [*raw, (_REQUEST_ID, request_id.encode("latin-1"))], content
        content = answer.content
        raw = [(b"content-length", b"%d" % len(content)), (_REQUEST_ID, request_id.encode("latin-1"))]
        raw += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers.items()]
        return answer.status_code, raw, content


infer = InferEndpoint()

INFER_ROUTES = [
    Route(path, infer, methods=["POST"], name=name, include_in_schema=False)
    for path, name in ((INFER_PATH, "infer"), (INFER_VERSION_PATH, "infer_version"))
]


class GatewayApp(FastAPI):
    """The gateway's FastAPI app, answering inference with `infer` before any of FastAPI's machinery."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = INFER.match(route_path(scope))
            if match is not None:
                scope["app"] = self
                await infer.serve(scope, receive, send, match)
                return
        await super().__call__(scope, receive, send)


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
