"""The services behind the gallery: one pooled HTTP client, JSON reads for the aggregations, and the proxy.

Every call carries the caller's own `Authorization` header, so each service checks its own rules
for the person behind the browser; the gallery holds no token of its own. A service that does not
answer is a 502 `{"error": "the <service> at <url> does not answer"}`; one that answers too slowly
a 504; what a service refuses keeps its status and its message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gallery_common.errors import GalleryError, NotFound
from gallery_common.telemetry import get_logger

from .settings import SERVICES, GalleryWebSettings

log = get_logger(__name__)

# what the gallery passes on to a service, and back from it; nothing else (no cookies, no hop-by-hop headers)
REQUEST_HEADERS = (
    "authorization",
    "content-type",
    "accept",
    "accept-encoding",
    "if-none-match",
    "inference-header-content-length",
    "traceparent",
    "tracestate",
)
RESPONSE_HEADERS = (
    "content-type",
    "content-length",
    "content-encoding",
    "content-disposition",
    "cache-control",
    "etag",
    "inference-header-content-length",
    "location",
    "retry-after",
    "www-authenticate",
)
CONNECT_TIMEOUT_S = 5.0


class UpstreamDown(GalleryError):
    """A service that does not answer (refused, unreachable, timed out while connecting)."""

    status_code = 502


class UpstreamSlow(GalleryError):
    """A service that took the connection but not answered within GALLERY_PROXY_TIMEOUT_S."""

    status_code = 504


class UpstreamRefused(GalleryError):
    """What a service answered with an error status: the same status and its own message."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    text = response.text.strip()
    return text[:300] or f"HTTP {response.status_code}"


class Upstreams:
    """Where each service answers, and the one pooled client the gallery reaches them with."""

    def __init__(self, settings: GalleryWebSettings, client: httpx.AsyncClient) -> None:
        self.urls = settings.service_urls
        self.client = client
        self.timeout_s = settings.proxy_timeout_s
        self.max_response_bytes = settings.proxy_max_response_bytes

    @staticmethod
    def open_client(settings: GalleryWebSettings) -> httpx.AsyncClient:
        """The pooled client: keep-alive connections to each service, no redirects followed, no cookies kept."""
        return httpx.AsyncClient(
            timeout=httpx.Timeout(settings.proxy_timeout_s, connect=min(CONNECT_TIMEOUT_S, settings.proxy_timeout_s)),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=40, keepalive_expiry=30.0),
            follow_redirects=False,
            trust_env=False,
        )

    def base_url(self, service: str) -> str:
        url = self.urls.get(service)
        if url is None:
            raise NotFound(f"the gallery reaches no service {service!r}; it reaches {', '.join(SERVICES)}")
        return url

    def _down(self, service: str, exc: Exception) -> GalleryError:
        url = self.urls[service]
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
            return UpstreamSlow(f"the {service} at {url} did not answer within {self.timeout_s:g} s")
        log.warning("upstream_down", service=service, url=url, reason=f"{type(exc).__name__}: {exc}")
        return UpstreamDown(f"the {service} at {url} does not answer")

    async def get_json(
        self,
        service: str,
        path: str,
        *,
        authorization: str | None,
        params: Mapping[str, Any] | list[tuple[str, Any]] | str | None = None,
    ) -> Any:
        """GET `path` of `service` as JSON; its error answers raise with their status and message."""
        url = self.base_url(service) + path
        headers = {"Accept": "application/json"}
        if authorization:
            headers["Authorization"] = authorization
        try:
            response = await self.client.get(url, params=params, headers=headers)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise self._down(service, exc) from exc
        if response.status_code == 404:
            raise NotFound(_error_text(response))
        if response.status_code >= 400:
            raise UpstreamRefused(response.status_code, f"the {service}: {_error_text(response)}")
        try:
            return response.json()
        except ValueError as exc:
            raise UpstreamRefused(502, f"the {service} answered {path} with something that is not JSON") from exc

    async def proxy(self, request: Request, service: str) -> Response:
        """Pass `request` on to `service` (method, path below `/api/<service>`, query, body, the headers
        above) and stream its answer back with its status."""
        base = self.base_url(service)
        target = base + _raw_tail(request, service)
        query = request.scope.get("query_string", b"")
        if query:
            target += "?" + query.decode("latin-1")
        headers = {name: value for name in REQUEST_HEADERS if (value := request.headers.get(name)) is not None}
        headers.setdefault("accept-encoding", "identity")
        body = await request.body()
        outgoing = self.client.build_request(request.method, httpx.URL(target), headers=headers, content=body or None)
        try:
            upstream = await self.client.send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            return _error_response(self._down(service, exc))
        declared = upstream.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_response_bytes:
            await upstream.aclose()
            return _error_response(
                UpstreamRefused(
                    502,
                    f"the {service}'s answer of {declared} bytes is over the gallery's limit of "
                    f"{self.max_response_bytes} bytes (GALLERY_PROXY_MAX_RESPONSE_BYTES)",
                )
            )
        passed = {name: value for name in RESPONSE_HEADERS if (value := upstream.headers.get(name)) is not None}
        return StreamingResponse(
            self._capped(upstream, service),
            status_code=upstream.status_code,
            headers=passed,
            background=BackgroundTask(upstream.aclose),
        )

    async def _capped(self, upstream: httpx.Response, service: str) -> AsyncIterator[bytes]:
        sent = 0
        try:
            async for chunk in upstream.aiter_raw():
                sent += len(chunk)
                if sent > self.max_response_bytes:
                    # the status is already out: stop short, so the browser sees a broken answer, not a whole one
                    log.warning("upstream_answer_too_large", service=service, limit=self.max_response_bytes)
                    raise RuntimeError(f"the {service}'s answer grew past GALLERY_PROXY_MAX_RESPONSE_BYTES")
                yield chunk
        except httpx.HTTPError as exc:
            log.warning("upstream_answer_broken", service=service, reason=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            await upstream.aclose()


def _raw_tail(request: Request, service: str) -> str:
    """The path below `/api/<service>` as the browser sent it (percent-escapes kept)."""
    raw: bytes | None = request.scope.get("raw_path")
    prefix = f"/api/{service}"
    if raw is not None:
        path = raw.decode("latin-1").split("?", 1)[0]
        root = request.scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if path.startswith(prefix):
            tail = path[len(prefix) :]
            return tail if tail.startswith("/") or not tail else "/" + tail
    return "/" + quote(request.path_params.get("path", ""), safe="/:@!$&'()*+,;=-._~")


def _error_response(exc: GalleryError) -> Response:
    return JSONResponse({"error": exc.message}, status_code=exc.status_code)
