"""uvicorn's httptools protocol, writing each response to the socket in one piece.

uvicorn writes a response's status line and headers as soon as the app sends `http.response.start`, and
its body in a second write. On loopback with TCP_NODELAY that is two segments, two system calls, and a
client that often wakes up twice for one answer; on a virtual machine, waking a sleeping peer is the
dearest part of a small request (measured here: a proxy at concurrency 1 spent ~25 us of its ~165 us
per request on the second write). `OneWriteHttpToolsProtocol` collects what the protocol writes during
one turn of the event loop and writes it at the end of that turn: headers and body go out together,
and nothing waits longer than the current callback.

An app may also answer some requests itself, before uvicorn builds an ASGI request for them (`DirectApp`):
a proxy at concurrency 1 spent about a third of its CPU per request in uvicorn's per-request machinery
(the request cycle and its event, the ASGI scope, receive and send). For a request whose method and path
the app claims, the protocol hands over the headers as they arrived, collects the body up to the app's
limit, and writes the app's answer (status, headers, body) in one write with uvicorn's default headers
(`date`, `server`). Keep-alive, `Connection: close`, HTTP/1.0, pipelined requests (queued behind the one
in flight, as uvicorn queues its own), graceful shutdown (the server waits for the answer) and a client
that goes away (nothing is written) behave as on uvicorn's path. A request the app does not claim, one
sent with `Expect: 100-continue`, an upgrade, or any request under a root path takes uvicorn's path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, Protocol, runtime_checkable
from urllib.parse import unquote

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .contracts.request_ids import REQUEST_ID_HEADER
from .errors import GalleryError, error_headers

log = logging.getLogger(__name__)

Reply = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, headers (lower-case names), body
Headers = list[tuple[bytes, bytes]]  # as they arrived: names in lower case, values as sent


class DirectExchange(Protocol):
    """One request an app answers directly, accepted from its headers; it sees the body once it is whole."""

    limit: int  # body bytes the request may carry

    def answer(self, body: bytes) -> Awaitable[Reply]:
        """The answer to the whole request; errors are the exchange's to turn into answers."""
        ...

    def refuse_body(self) -> Reply:
        """The answer once the body grows past `limit` (the connection is closed after it)."""
        ...


@runtime_checkable
class DirectApp(Protocol):
    """An ASGI app that answers some requests without ASGI (found under uvicorn's middlewares)."""

    def direct(self, method: bytes, path: str, headers: Headers) -> DirectExchange | Reply | None:
        """For a request it answers itself: an exchange to collect the body for, or a reply to send at once
        (a refusal from the headers alone; the connection is closed after it). None: uvicorn's path."""
        ...


def _direct_app(app: Any) -> DirectApp | None:
    """The `DirectApp` under uvicorn's middlewares (each keeps the app it wraps as `.app`), if any."""
    for _ in range(8):
        if isinstance(app, DirectApp):
            return app
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


class _DirectCycle:
    """A request answered by a `DirectApp`, in the attributes uvicorn reads off its own request cycle."""

    __slots__ = ("body", "disconnected", "exchange", "keep_alive", "response_complete", "size")

    def __init__(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive
        self.response_complete = False
        self.disconnected = False
        self.exchange: DirectExchange | None = None
        self.body: list[bytes] = []
        self.size = 0

    @property
    def message_event(self) -> _DirectCycle:
        return self  # uvicorn sets its cycle's event when the connection is lost: nothing waits on this one

    def set(self) -> None:
        pass


_JSON = (b"content-type", b"application/json")
_REQUEST_ID = REQUEST_ID_HEADER.encode("latin-1")  # lower case, as headers are written here


def error_reply(exc: GalleryError, request_id: str | None = None) -> Reply:
    """A domain error as an answer written without a framework's response objects: its status,
    `{"error": message}`, its `error_headers` and, when the request has one, its request id. Carries no
    Content-Length (whoever writes the reply adds it)."""
    headers = [_JSON]
    headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in error_headers(exc).items()]
    if request_id is not None:
        headers.append((_REQUEST_ID, request_id.encode("latin-1")))
    return exc.status_code, headers, orjson.dumps({"error": exc.message})


INTERNAL_ERROR: Reply = (
    500,
    [(b"content-type", b"application/json")],
    b'{"error":"internal error; the service log has the details"}',
)


class _OneWriteTransport:
    """A transport that joins the writes made in one event-loop turn; everything else is the real one's."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def write_now(self, data: bytes) -> None:
        """Write `data` at once, unless this loop turn already wrote (then after that, in one piece)."""
        if self._pending:
            self._pending.append(data)
        else:
            self._transport.write(data)

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """`uvicorn.run(app, http=OneWriteHttpToolsProtocol, ...)`: httptools, one write per response, and the
    requests a `DirectApp` claims answered without ASGI."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        direct = _direct_app(self.app)
        # uvicorn's limit on concurrent requests is counted on its own path only
        self._direct = direct if self.limit_concurrency is None and not self.root_path else None
        self._one_write: _OneWriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        one_write = self._one_write = _OneWriteTransport(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        super().connection_made(one_write)  # type: ignore[arg-type]

    def on_headers_complete(self) -> None:
        direct = self._direct
        cycle = self.cycle
        if (
            direct is None
            or (cycle is not None and not cycle.response_complete)  # pipelined: queued on uvicorn's path
            or self.expect_100_continue
            or self.parser.should_upgrade()
        ):
            super().on_headers_complete()
            return
        target = self.url
        query = target.find(b"?")
        raw_path = (target if query < 0 else target[:query]).decode("latin-1")
        path = unquote(raw_path) if "%" in raw_path else raw_path
        started = direct.direct(self.parser.get_method(), path, self.headers)
        if started is None:
            super().on_headers_complete()
            return
        direct_cycle = _DirectCycle(self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive())
        self.cycle = direct_cycle  # type: ignore[assignment]
        if isinstance(started, tuple):
            direct_cycle.keep_alive = False  # refused before its body: the rest of it is not read
            self._answer_directly(direct_cycle, started)
        else:
            direct_cycle.exchange = started

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is not _DirectCycle:
            super().on_body(body)
            return
        if cycle.response_complete:
            return
        exchange = cycle.exchange
        assert exchange is not None
        cycle.size += len(body)
        if cycle.size > exchange.limit:
            cycle.keep_alive = False
            self._answer_directly(cycle, exchange.refuse_body())
            return
        cycle.body.append(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if type(cycle) is not _DirectCycle:
            super().on_message_complete()
            return
        if cycle.response_complete:
            return
        task = self.loop.create_task(self._run_direct(cycle))
        self.tasks.add(task)  # the server waits for it on shutdown, as for its own requests
        task.add_done_callback(self.tasks.discard)

    async def _run_direct(self, cycle: _DirectCycle) -> None:
        assert cycle.exchange is not None
        body = cycle.body[0] if len(cycle.body) == 1 else b"".join(cycle.body)
        cycle.body = []
        try:
            reply = await cycle.exchange.answer(body)
        except Exception:  # the exchange answers its own errors; this is a defect in it
            log.exception("a direct exchange raised instead of answering")
            reply = INTERNAL_ERROR
        self._answer_directly(cycle, reply)

    def _answer_directly(self, cycle: _DirectCycle, reply: Reply) -> None:
        """Write `reply` in one piece (nothing when the client has gone), then go on as uvicorn does after
        an answer: close, or start the next pipelined request, or wait for one."""
        if cycle.response_complete:
            return
        cycle.response_complete = True
        if cycle.disconnected or self.transport.is_closing():
            return
        status, headers, body = reply
        head = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *headers):
            head += (name, b": ", value, b"\r\n")
        head.append(b"content-length: %d\r\n" % len(body))
        if not cycle.keep_alive:
            head.append(b"connection: close\r\n")
        head += (b"\r\n", body)
        assert self._one_write is not None
        self._one_write.write_now(b"".join(head))
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()
