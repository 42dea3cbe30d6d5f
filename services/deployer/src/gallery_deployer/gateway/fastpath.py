"""The inference route without FastAPI's routing and dependency machinery.

At 64 concurrent clients FastAPI's per-request work (route matching, dependency solving, request
objects) cost the gateway about three quarters of its CPU. `POST /v2/models/{model}[/versions/{v}]/infer`
is the one hot path, so this ASGI middleware answers it directly: the same bearer-token check, the same
`{"error": ...}` answers and the same HTTP metrics, then `Gateway.infer`. Every other request goes on to
the FastAPI app.
"""

from __future__ import annotations

import re
import time
from collections.abc import MutableMapping
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from gallery_common.app import HTTP_DURATION, HTTP_REQUESTS, gallery_error_response
from gallery_common.auth import identify
from gallery_common.errors import Forbidden, GalleryError, Unavailable
from gallery_common.settings import Role

from .settings import GatewaySettings

INFER = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
ROUTES = {False: "/v2/models/{model}/infer", True: "/v2/models/{model}/versions/{version}/infer"}


def is_inference(scope: MutableMapping[str, Any]) -> bool:
    """True for the requests this fast path answers."""
    return scope["type"] == "http" and scope.get("method") == "POST" and INFER.match(scope["path"]) is not None


class PayloadTooLarge(GalleryError):
    status_code = 413


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body; PayloadTooLarge past `limit` bytes."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Unavailable("the client went away before sending the whole request")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is over the gateway's limit of {limit} bytes")
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


class InferFastPath:
    """Serves inference requests itself and hands everything else to `app`."""

    def __init__(self, app: ASGIApp, settings: GatewaySettings, gateway_key: str) -> None:
        self.app = app
        self.settings = settings
        self.gateway_key = gateway_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = INFER.match(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = Headers(scope=scope)
        try:
            caller = identify(self.settings, headers.get("authorization"))
            if not caller.can(Role.writer):
                raise Forbidden(f"inference needs the writer role; your token has {caller.role.value}")
            body = await read_body(receive, self.settings.max_body_bytes)
            gateway = scope["app"].state.resources.extras.get(self.gateway_key)
            if gateway is None:
                raise Unavailable("the gateway is still starting")
            cookies = cookie_parser(headers.get("cookie", ""))
            response = await gateway.infer(match["model"], match["version"], scope["path"], body, headers, cookies)
        except GalleryError as exc:
            response = gallery_error_response(exc)
        await response(scope, receive, send)
        route = ROUTES[match["version"] is not None]
        service = self.settings.service_name
        HTTP_REQUESTS.labels(service, "POST", route, str(response.status_code)).inc()
        HTTP_DURATION.labels(service, "POST", route).observe(time.perf_counter() - start)
