"""`POST /v2/models/{name}[/versions/{v}]/infer` as a raw ASGI handler in front of the Starlette app.

The infer path is the model server's whole hot path, and FastAPI's route (access middleware, exception
middleware, routing, dependency solving, a Request and a Response object per request) cost about as
much CPU as the rest of the request. Here it is one function: the same access check as every other
route (`access.admit`: the `inference` role, the body-size limit before a byte is read), the body
handed to the data plane, its answer or its GalleryError sent with pre-encoded headers. Every other
path and method goes on to the app.
"""

from __future__ import annotations

import re
import time

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from gallery_common.access import admit, read_body, route_path
from gallery_common.contracts.oip import INFERENCE_HEADER_LENGTH, USAGE_ROWS_HEADER, USAGE_SECONDS_HEADER
from gallery_common.contracts.request_ids import REQUEST_ID_HEADER, checked_request_id, new_request_id
from gallery_common.errors import GalleryError
from gallery_common.http_server import error_reply
from gallery_common.settings import GallerySettings, Role

from .dataplane import DataPlane

INFER_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
_HEADER_LENGTH = INFERENCE_HEADER_LENGTH.lower().encode("latin-1")
_JSON_HEADERS = [(b"content-type", b"application/json")]
_BINARY_HEADERS = [(b"content-type", b"application/octet-stream")]
_REQUEST_ID = REQUEST_ID_HEADER.encode("latin-1")
_ROWS = USAGE_ROWS_HEADER.encode("latin-1")
_SECONDS = USAGE_SECONDS_HEADER.encode("latin-1")


class InferRoute:
    """ASGI middleware answering infer requests straight from the data plane; everything else goes to `app`."""

    def __init__(self, app: ASGIApp, plane: DataPlane, settings: GallerySettings) -> None:
        self.app = app
        self.plane = plane
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            match = INFER_PATH.match(route_path(scope))
            if match is not None:
                await self._infer(scope, receive, send, match["name"], match["version"])
                return
        await self.app(scope, receive, send)

    async def _infer(self, scope: Scope, receive: Receive, send: Send, name: str, version: str | None) -> None:
        started = time.perf_counter()
        if scope["method"] != "POST":
            await _send(send, 405, orjson.dumps({"error": "Method Not Allowed"}), [*_JSON_HEADERS, (b"allow", b"POST")])
            return
        request_id = None
        try:
            body = admit(self.settings, scope, receive, Role.inference, self.settings.max_body_bytes)
            header_length, given = _read_headers(scope)
            request_id = new_request_id() if given is None else checked_request_id(given)
            data = await read_body(body.receive)
            answer = await self.plane.infer(
                data, header_length, name=name, version=version, started=started, request_id=request_id
            )
        except GalleryError as exc:
            status, headers, refusal = error_reply(exc, request_id)
            await _send(send, status, refusal, headers)
            return
        # what the request cost (for the gateway's usage metering) and which request it was
        named = (_REQUEST_ID, request_id.encode("latin-1"))
        usage = [(_ROWS, b"%d" % answer.rows), (_SECONDS, b"%.6f" % (time.perf_counter() - started)), named]
        if answer.header_length is None:
            await _send(send, 200, answer.body, _JSON_HEADERS + usage)
        else:
            headers = [*_BINARY_HEADERS, (_HEADER_LENGTH, str(answer.header_length).encode("latin-1")), *usage]
            await _send(send, 200, answer.body, headers)


def _read_headers(scope: Scope) -> tuple[str | None, str | None]:
    """The binary-data header's value and the request id header's, in one pass."""
    header_length = request_id = None
    for key, value in scope["headers"]:
        if key == _HEADER_LENGTH:
            header_length = value.decode("latin-1")
        elif key == _REQUEST_ID:
            request_id = value.decode("latin-1")
    return header_length, request_id


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode("latin-1"))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
