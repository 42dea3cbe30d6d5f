"""The inference route without FastAPI's routing and dependency machinery.

At 64 concurrent clients FastAPI's per-request work (route matching, dependency solving, request
objects) cost the gateway about three quarters of its CPU. `POST /v2/models/{model}[/versions/{v}]/infer`
is the one hot path, so this ASGI middleware answers it directly with `Gateway.infer`; every other
request goes on to the FastAPI app. It runs behind the app's `AccessMiddleware`, which has already
checked the caller's token for the `inference` role the routes in api.py declare and limits the body
it reads, and in front of nothing else: the same `{"error": ...}` answers and HTTP metrics as any route.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from gallery_common.access import read_body
from gallery_common.app import gallery_error_response
from gallery_common.errors import GalleryError, Unavailable

INFER = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")


def is_inference(scope: MutableMapping[str, Any]) -> bool:
    """True for the requests this fast path answers."""
    return scope["type"] == "http" and scope.get("method") == "POST" and INFER.match(scope["path"]) is not None


class InferFastPath:
    """Serves inference requests itself and hands everything else to `app`."""

    def __init__(self, app: ASGIApp, gateway_key: str) -> None:
        self.app = app
        self.gateway_key = gateway_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = INFER.match(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            body = await read_body(receive)
            gateway = scope["app"].state.resources.extras.get(self.gateway_key)
            if gateway is None:
                raise Unavailable("the gateway is still starting")
            cookies = cookie_parser(headers.get("cookie", ""))
            response = await gateway.infer(match["model"], match["version"], scope["path"], body, headers, cookies)
        except GalleryError as exc:
            response = gallery_error_response(exc)
        await response(scope, receive, send)
