"""The gateway's inference route, answered before FastAPI and its middleware see the request.

`POST /v2/models/{model}[/versions/{v}]/infer` is the one hot path, and a proxy should cost less than the
server it fronts: FastAPI's per-request work (its telemetry hooks, the error, metrics and access
middlewares, routing, request and response objects) cost the gateway about as much CPU as forwarding the
request. Under `gallery_common.http_server.OneWriteHttpToolsProtocol` (how every service is served) they do
not even become ASGI requests: `GatewayApp.direct` claims them from the HTTP protocol, which collects the
body and writes the answer itself (uvicorn's request cycle was about a tenth of the gateway's CPU per
request); elsewhere (a pipelined request, a test client over ASGI) `GatewayApp` hands them to
`InferEndpoint` before FastAPI's machinery. Either way `InferEndpoint` does what that stack would: the same
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
from collections.abc import Iterable, MutableMapping
from typing import Any

from fastapi import FastAPI
from starlette.requests import cookie_parser
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gallery_common.access import admit, admit_headers, read_body, route_path, too_large
from gallery_common.app import HTTP_DURATION, HTTP_REQUESTS, ServiceResources
from gallery_common.auth import CALLER_SCOPE_KEY, ROLE_ATTRIBUTE, Caller
from gallery_common.contracts.oip import INFERENCE_HEADER_LENGTH
from gallery_common.contracts.request_ids import REQUEST_ID_HEADER, checked_request_id, new_request_id
from gallery_common.errors import GalleryError
from gallery_common.http_server import INTERNAL_ERROR, Headers, Reply, error_reply
from gallery_common.settings import Role
from gallery_common.telemetry import get_logger

from .metrics import bound
from .proxy import Gateway

log = get_logger(__name__)

OIP_TAG = "inference (OIP v2)"
INFER = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
INFER_PATH = "/v2/models/{model}/infer"
INFER_VERSION_PATH = "/v2/models/{model}/versions/{version}/infer"

_REQUEST_ID = REQUEST_ID_HEADER.encode("latin-1")


def is_inference(scope: MutableMapping[str, Any]) -> bool:
    """True for the requests this fast path answers."""
    return scope["type"] == "http" and scope.get("method") == "POST" and INFER.match(route_path(scope)) is not None


def _decoded(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    # ASGI servers and httptools give header names in lower case
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in raw}


class InferEndpoint:
    """Forwards an infer request, as bytes, to the backend the model's traffic policy picks, and answers it:
    through ASGI (`serve`), or straight from the HTTP protocol (`begin`, `gallery_common.http_server`).
    Replies carry no Content-Length; whoever writes them adds it."""

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
            status, headers, body = await self._asgi_reply(scope, receive, match, resources)
        except Exception as exc:  # what the app's error middleware does for every other route
            log.error("unhandled error", path=scope["path"], exc_info=exc)
            status, headers, body = INTERNAL_ERROR
        headers = [(b"content-length", b"%d" % len(body)), *headers]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.count(resources, match, status, started)

    @staticmethod
    def count(resources: ServiceResources, match: re.Match[str], status: int, started: float) -> None:
        """The HTTP request metrics, under the route's template."""
        template = INFER_PATH if match["version"] is None else INFER_VERSION_PATH
        service = resources.settings.service_name
        bound(HTTP_REQUESTS, service, "POST", template, str(status)).inc()
        bound(HTTP_DURATION, service, "POST", template).observe(time.perf_counter() - started)

    async def _asgi_reply(
        self, scope: Scope, receive: Receive, match: re.Match[str], resources: ServiceResources
    ) -> Reply:
        settings = resources.settings
        try:
            body = admit(settings, scope, receive, Role.inference, settings.max_body_bytes)
            data = await read_body(body.receive)
        except GalleryError as exc:
            return error_reply(exc)
        return await self.forward(resources, match, _decoded(scope["headers"]), scope[CALLER_SCOPE_KEY], data)

    def begin(self, resources: ServiceResources, match: re.Match[str], raw: Headers) -> _InferExchange | Reply:
        """The direct path's access check, from the headers alone (as `admit` checks on the ASGI path)."""
        started = time.perf_counter()
        settings = resources.settings
        headers = _decoded(raw)
        limit = settings.max_body_bytes
        try:
            caller = admit_headers(
                settings, headers.get("authorization"), headers.get("content-length"), Role.inference, limit
            )
        except GalleryError as exc:
            reply = error_reply(exc)
            self.count(resources, match, reply[0], started)
            return reply
        assert caller is not None
        return _InferExchange(self, resources, match, headers, caller, started, limit)

    @staticmethod
    async def forward(
        resources: ServiceResources, match: re.Match[str], headers: dict[str, str], caller: Caller, body: bytes
    ) -> Reply:
        """The gateway's answer to an admitted request; domain errors answered with their status."""
        request_id = None
        try:
            given = headers.get(REQUEST_ID_HEADER)
            request_id = new_request_id() if given is None else checked_request_id(given)
            cookie = headers.get("cookie")
            cookies = cookie_parser(cookie) if cookie else {}
            gateway = resources.core_as(Gateway)
            answer = await gateway.infer(
                match["model"], match["version"], match.string, body, headers, cookies, caller, request_id
            )
        except GalleryError as exc:
            return error_reply(exc, request_id)
        raw = [(_REQUEST_ID, request_id.encode("latin-1"))]
        raw += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers.items()]
        return answer.status_code, raw, answer.content


class _InferExchange:
    """An infer request admitted from its headers on the direct path, waiting for its body."""

    __slots__ = ("caller", "endpoint", "headers", "limit", "match", "resources", "started")

    def __init__(
        self,
        endpoint: InferEndpoint,
        resources: ServiceResources,
        match: re.Match[str],
        headers: dict[str, str],
        caller: Caller,
        started: float,
        limit: int,
    ) -> None:
        self.endpoint = endpoint
        self.resources = resources
        self.match = match
        self.headers = headers
        self.caller = caller
        self.started = started
        self.limit = limit

    async def answer(self, body: bytes) -> Reply:
        try:
            reply = await self.endpoint.forward(self.resources, self.match, self.headers, self.caller, body)
        except Exception as exc:  # what the app's error middleware does for every other route
            log.error("unhandled error", path=self.match.string, exc_info=exc)
            reply = INTERNAL_ERROR
        self.endpoint.count(self.resources, self.match, reply[0], self.started)
        return reply

    def refuse_body(self) -> Reply:
        reply = error_reply(too_large(self.limit))
        self.endpoint.count(self.resources, self.match, reply[0], self.started)
        return reply


infer = InferEndpoint()

INFER_ROUTES = [
    Route(path, infer, methods=["POST"], name=name, include_in_schema=False)
    for path, name in ((INFER_PATH, "infer"), (INFER_VERSION_PATH, "infer_version"))
]


class GatewayApp(FastAPI):
    """The gateway's FastAPI app, answering inference with `infer` before any of FastAPI's machinery:
    straight from the HTTP protocol where it runs under `OneWriteHttpToolsProtocol` (`direct`), else here."""

    def direct(self, method: bytes, path: str, headers: Headers) -> _InferExchange | Reply | None:
        if method != b"POST":
            return None
        match = INFER.match(path)
        if match is None:
            return None
        return infer.begin(self.state.resources, match, headers)

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
