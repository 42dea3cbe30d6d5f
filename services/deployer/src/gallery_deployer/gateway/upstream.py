"""The gateway's HTTP/1.1 client for its backends: keep-alive connections over asyncio protocols.

A proxy pays its client's cost on every request. aiohttp's per-request machinery (request and response
objects, cookie jar, tracing signals, timers, stream readers) cost the gateway more CPU than the rest of
its work together; this client does what forwarding needs and nothing else: one write of the request,
httptools (uvicorn's parser) for the answer, whether framed by Content-Length, chunked or the end of the
connection, and the connection back into its origin's pool when the answer allows it.

Errors say whether the request can have reached the backend: `ConnectFailed` (no connection, nothing
sent) is safe to send again, `Disconnected` (the connection ended before a whole answer) is not, and a
time limit raises `TimeoutError`. A pooled connection the backend closed while it was idle fails before a
byte of the answer arrives; that one request is sent once more on a fresh connection.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

# headers this client writes itself, whatever a caller passes
_FRAMING = frozenset({"host", "content-length", "transfer-encoding"})
# uvicorn closes a keep-alive connection after 5 s idle; one idle longer than this is not reused, so
# the gateway never races the backend's close
IDLE_REUSE_S = 4.0


class UpstreamError(Exception):
    """A backend gave no usable answer."""


class ConnectFailed(UpstreamError):
    """No connection could be opened: the request was not sent."""


class Disconnected(UpstreamError):
    """The connection ended, or the answer was not HTTP, before the whole answer arrived."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A backend's complete HTTP answer, read into memory; header names in lower case."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection, carrying one exchange at a time."""

    def __init__(self, origin: _Origin) -> None:
        self.origin = origin
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Answer] | None = None
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.received = False
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.framed = False  # the answer says where it ends (Content-Length or chunked)
        self.reusable = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(Disconnected(f"the backend's answer is not HTTP/1.1: {exc}"))
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.framed = "content-length" in self.headers or "transfer-encoding" in self.headers

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.reusable = self.parser.should_keep_alive()
        self._finish()

    def _finish(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(Answer(self.status, self.headers, b"".join(self.body)))

    def _fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def time_out(self) -> None:
        self._fail(TimeoutError())
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.origin.forget(self)
        if self.waiter is None:
            return
        if self.status and not self.framed:
            self._finish()  # an answer without a length ends with its connection
        else:
            self._fail(Disconnected(f"the backend closed the connection ({exc!r})" if exc else "connection closed"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class _Origin:
    """scheme://host:port: how to connect there, and its idle connections, most recently used last."""

    def __init__(self, origin: str) -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConnectFailed(f"not an http(s) URL: {origin!r}")
        if parts.username or parts.password:
            raise ConnectFailed("credentials in a backend URL are not supported; set GALLERY_MODEL_SERVER_TOKEN")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = self.port == (443 if self.ssl else 80)
        self.host_header = (host if default_port else f"{host}:{self.port}").encode("latin-1")
        self.idle: deque[_Connection] = deque()

    def take_idle(self, now: float) -> _Connection | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_REUSE_S:
                return conn
            conn.close()
        return None

    def forget(self, conn: _Connection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)


def _header_lines(headers: Mapping[str, str]) -> bytes:
    """`name: value` lines; a line break inside a name or value (header injection) is refused."""
    text = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if text.count("\n") != len(headers) or text.count("\r") != len(headers):
        raise ValueError("a header name or value holds a line break")
    return text.encode("latin-1")


class UpstreamPool:
    """Keep-alive connections to any number of backends, at most `max_connections` requests in flight.

    `default_headers` go with every request unless the request sets the same header itself.
    """

    def __init__(self, *, max_connections: int, default_headers: Mapping[str, str] | None = None) -> None:
        self._limit = max_connections
        self._busy = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._defaults = {name.lower(): value for name, value in (default_headers or {}).items()}
        self._origins: dict[str, _Origin] = {}
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def set_default(self, name: str, value: str) -> None:
        """Send `name: value` with every request from now on (the gateway's renewed identity)."""
        self._defaults[name.lower()] = value

    def _split(self, url: str) -> tuple[_Origin, bytes]:
        start = url.find("//") + 2
        slash = url.find("/", start) if start > 1 else -1
        key, target = (url, "/") if slash < 0 else (url[:slash], url[slash:])
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin(key)
        return origin, target.encode("latin-1")

    def _encode(self, method: str, origin: _Origin, target: bytes, body: bytes, headers: Mapping[str, str]) -> bytes:
        if self._defaults or any(name.lower() in _FRAMING for name in headers):
            headers = {**self._defaults, **{name.lower(): value for name, value in headers.items()}}
            headers = {name: value for name, value in headers.items() if name not in _FRAMING}
        head = b"%s %s HTTP/1.1\r\nhost: %s\r\ncontent-length: %d\r\n%s\r\n" % (
            method.encode("ascii"),
            target,
            origin.host_header,
            len(body),
            _header_lines(headers),
        )
        return head + body

    async def request(self, method: str, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> Answer:
        """Send one request and read its whole answer within `timeout` seconds."""
        if self._closed:
            raise ConnectFailed("the gateway is shutting down")
        loop = self._loop
        if loop is None:  # the pool serves the loop it is first used on (asking costs a system call each time)
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        origin, target = self._split(url)
        payload = self._encode(method, origin, target, body, headers)
        if self._busy >= self._limit:
            await self._wait_for_slot(loop, deadline)
        self._busy += 1
        try:
            conn = origin.take_idle(loop.time())
            if conn is not None:
                try:
                    return await self._exchange(loop, conn, payload, deadline)
                except Disconnected:
                    if conn.received:
                        raise
                    # closed by the backend as it sat idle: the request never reached it
            conn = await self._connect(loop, origin, deadline)
            return await self._exchange(loop, conn, payload, deadline)
        finally:
            self._free_slot()

    async def _wait_for_slot(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Until fewer than `max_connections` requests are in flight (the caller then takes the slot)."""
        while self._busy >= self._limit:
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            finally:
                if not waiter.done():
                    waiter.cancel()

    def _free_slot(self) -> None:
        self._busy -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self, loop: asyncio.AbstractEventLoop, origin: _Origin, deadline: float) -> _Connection:
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await loop.create_connection(
                    lambda: _Connection(origin),
                    origin.host,
                    origin.port,
                    ssl=origin.ssl,
                    server_hostname=origin.host if origin.ssl else None,
                )
        except OSError as exc:  # refused, unreachable, no such host, TLS handshake failed
            raise ConnectFailed(f"cannot connect to {origin.host}:{origin.port} ({exc.strerror or exc!r})") from exc
        return conn

    async def _exchange(
        self, loop: asyncio.AbstractEventLoop, conn: _Connection, payload: bytes, deadline: float
    ) -> Answer:
        waiter: asyncio.Future[Answer] = loop.create_future()
        conn.waiter = waiter
        assert conn.transport is not None
        conn.transport.write(payload)
        timer = loop.call_at(deadline, conn.time_out)
        try:
            answer = await waiter
        except BaseException:
            conn.waiter = None
            conn.close()  # mid-exchange: the connection cannot carry another request
            raise
        finally:
            timer.cancel()
        if conn.reusable and not conn.closed and not self._closed:
            conn._reset()
            conn.idle_since = loop.time()
            conn.origin.idle.append(conn)
        else:
            conn.close()
        return answer

    async def close(self) -> None:
        """Close every idle connection; requests in flight end with their connections."""
        self._closed = True
        for origin in self._origins.values():
            while origin.idle:
                origin.idle.pop().close()
