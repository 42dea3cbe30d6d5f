"""`OneWriteHttpToolsProtocol`: what uvicorn writes for one response reaches the socket in one write, in
order, and nothing is lost on close or sent after an abort; served by uvicorn, answers stay whole. Requests
a `DirectApp` claims are answered without ASGI with the same HTTP behaviour: keep-alive, pipelining,
HTTP/1.0, body limits, refusals from the headers, a client that leaves, and everything else on uvicorn's path."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from gallery_common.access import gallery_error_response
from gallery_common.errors import NotFound, Unauthorized, Unavailable
from gallery_common.http_server import (
    DirectApp,
    Headers,
    OneWriteHttpToolsProtocol,
    Reply,
    _OneWriteTransport,
    error_reply,
)
from gallery_common.netutil import free_port


class RecordingTransport:
    """What the socket would have been asked to send, write by write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"extra:{name}"


async def test_writes_of_one_loop_turn_leave_in_one_write_in_order() -> None:
    real = RecordingTransport()
    transport = _OneWriteTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"ok")
    assert real.writes == []  # nothing until the current callback ends
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
    transport.writelines([b"a", b"b"])
    await asyncio.sleep(0)
    assert real.writes[-1] == b"ab"
    assert transport.get_extra_info("peername") == "extra:peername"


async def test_close_sends_what_is_pending_first_and_abort_drops_it() -> None:
    loop = asyncio.get_running_loop()
    real = RecordingTransport()
    transport = _OneWriteTransport(real, loop)  # type: ignore[arg-type]
    transport.write(b"last answer")
    transport.close()
    assert real.writes == [b"last answer"] and real.closed
    await asyncio.sleep(0)
    assert real.writes == [b"last answer"]  # the flush already scheduled finds nothing more

    aborted = RecordingTransport()
    transport = _OneWriteTransport(aborted, loop)  # type: ignore[arg-type]
    transport.write(b"never sent")
    transport.abort()
    await asyncio.sleep(0)
    assert aborted.writes == []


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echoes the body; /stream answers in three chunks, /close asks for the connection to end."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
        return
    headers = [(b"content-length", b"%d" % len(body))]
    if scope["path"] == "/close":
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Echo:
    """A direct exchange: answers the body it was given, after a wait when the path says so."""

    limit = 16

    def __init__(self, path: str, headers: Headers) -> None:
        self.path = path
        self.headers = dict(headers)

    async def answer(self, body: bytes) -> Reply:
        if self.path == "/direct/slow":
            await asyncio.sleep(0.3)
        if self.path == "/direct/broken":
            raise RuntimeError("a defect in the exchange")
        return 200, [(b"x-direct", self.headers.get(b"x-tag", b"-"))], b"direct:" + body

    def refuse_body(self) -> Reply:
        return 413, [], b"too large"


class DirectEchoApp:
    """The ASGI echo `app`, answering POST /direct/... itself (`DirectApp`), the way the gateway's infer is."""

    def __init__(self) -> None:
        self.started: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await app(scope, receive, send)

    def direct(self, method: bytes, path: str, headers: Headers) -> Echo | Reply | None:
        if method != b"POST" or not path.startswith("/direct/"):
            return None
        self.started.append(path)
        if (b"x-refuse", b"yes") in headers:
            return 403, [(b"content-type", b"text/plain")], b"refused"
        return Echo(path, headers)


@contextmanager
def one_write_server(served: Any = app) -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(served, host="127.0.0.1", port=port, http=OneWriteHttpToolsProtocol, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(30)


def read_until(sock: socket.socket, end: bytes) -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def test_uvicorn_with_the_protocol_answers_whole_over_keep_alive_streams_and_closes() -> None:
    with one_write_server() as port, socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for body in (b"first", b"second"):
            sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            answer = read_until(sock, body)
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: %d" % len(body) in answer
        sock.sendall(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        streamed = read_until(sock, b"0\r\n\r\n")
        assert b"transfer-encoding: chunked" in streamed
        assert streamed.endswith(b"4\r\none \r\n4\r\ntwo \r\n5\r\nthree\r\n0\r\n\r\n")
        sock.sendall(b"POST /close HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nbye")
        assert read_until(sock, b"bye").startswith(b"HTTP/1.1 200 OK")
        assert sock.recv(1) == b""  # closed after the whole answer


class Answers:
    """Whole answers off one connection, framed by Content-Length (a 100 Continue skipped)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = b""

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"connection closed after {self.data!r}"
        self.data += chunk

    def next(self) -> tuple[bytes, bytes]:
        while b"\r\n\r\n" not in self.data:
            self._more()
        head, _, rest = self.data.partition(b"\r\n\r\n")
        if head.startswith(b"HTTP/1.1 100"):
            self.data = rest
            return self.next()
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(rest) < length:
            self._more()
            head, _, rest = self.data.partition(b"\r\n\r\n")
        self.data = rest[length:]
        return head, rest[:length]


def read_answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """The one answer the connection carries now."""
    answers = Answers(sock)
    answer = answers.next()
    assert answers.data == b"", "more than one answer arrived"
    return answer


def post(path: str, body: bytes, *extra: str, version: str = "1.1") -> bytes:
    lines = [f"POST {path} HTTP/{version}", "host: x", f"content-length: {len(body)}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_direct_requests_share_keep_alive_with_asgi_ones_and_carry_uvicorns_default_headers() -> None:
    served = DirectEchoApp()
    assert isinstance(served, DirectApp)
    with one_write_server(served) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(post("/direct/a?x=1", b"one", "x-tag: first"))
        head, body = read_answer(sock)
        assert head.startswith(b"HTTP/1.1 200 OK") and body == b"direct:one"
        assert b"x-direct: first" in head and b"date: " in head and b"server: uvicorn" in head
        sock.sendall(post("/echo", b"two"))  # the same connection, uvicorn's path
        head, body = read_answer(sock)
        assert head.startswith(b"HTTP/1.1 200 OK") and body == b"two" and b"x-direct" not in head
        sock.sendall(post("/direct/b", b"three"))
        assert read_answer(sock)[1] == b"direct:three"
    assert served.started == ["/direct/a", "/direct/b"]  # the path without its query


def test_pipelined_requests_are_answered_in_order_behind_a_slow_direct_one() -> None:
    """Requests sent behind one in flight wait on uvicorn's path (its queue), a claimed one included."""
    with one_write_server(DirectEchoApp()) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(post("/direct/slow", b"first") + post("/echo", b"second") + post("/direct/c", b"third"))
        answers = Answers(sock)
        assert [answers.next()[1] for _ in range(3)] == [b"direct:first", b"second", b"third"]
        sock.sendall(post("/direct/d", b"fourth"))  # once the queue is empty, claimed requests go direct again
        assert answers.next()[1] == b"direct:fourth"


def test_a_body_over_the_limit_is_refused_and_the_connection_closed() -> None:
    with one_write_server(DirectEchoApp()) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /direct/a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                b"a\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n"
            )
            head, body = read_answer(sock)
            assert head.startswith(b"HTTP/1.1 413") and body == b"too large" and b"connection: close" in head
            assert sock.recv(1) == b""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # a body within it passes
            sock.sendall(
                b"POST /direct/a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            )
            assert read_answer(sock)[1] == b"direct:hello"


def test_a_refusal_from_the_headers_is_answered_at_once_and_closes() -> None:
    with one_write_server(DirectEchoApp()) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(post("/direct/a", b"body", "x-refuse: yes"))
        head, body = read_answer(sock)
        assert head.startswith(b"HTTP/1.1 403") and body == b"refused" and b"connection: close" in head
        assert sock.recv(1) == b""


def test_http_1_0_and_connection_close_end_the_connection_after_the_answer() -> None:
    with one_write_server(DirectEchoApp()) as port:
        for request in (post("/direct/a", b"old", version="1.0"), post("/direct/a", b"bye", "connection: close")):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(request)
                head, body = read_answer(sock)
                assert body in (b"direct:old", b"direct:bye") and b"connection: close" in head
                assert sock.recv(1) == b""


def test_an_exchange_that_raises_answers_500_and_the_server_goes_on() -> None:
    with one_write_server(DirectEchoApp()) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(post("/direct/broken", b"x"))
        head, body = read_answer(sock)
        assert head.startswith(b"HTTP/1.1 500") and b"internal error" in body
        sock.sendall(post("/direct/a", b"after"))
        assert read_answer(sock)[1] == b"direct:after"


def test_a_client_gone_before_its_answer_gets_nothing_written_and_others_are_served() -> None:
    with one_write_server(DirectEchoApp()) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(post("/direct/slow", b"left"))
        time.sleep(0.5)  # the slow answer is ready after the client left
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(post("/direct/a", b"still"))
            assert read_answer(sock)[1] == b"direct:still"


def test_expect_100_continue_takes_uvicorns_path() -> None:
    served = DirectEchoApp()
    with one_write_server(served) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(post("/direct/a", b"", "expect: 100-continue"))
        head, body = read_answer(sock)
        assert head.startswith(b"HTTP/1.1 200") and body == b""  # the ASGI echo, not "direct:"
    assert served.started == []


def test_an_error_reply_carries_what_the_client_needs_to_act_on_it() -> None:
    refused = error_reply(Unauthorized("no token"), "0123456789abcdef0123456789abcdef")
    assert refused == (
        401,
        [
            (b"content-type", b"application/json"),
            (b"www-authenticate", b"Bearer"),
            (b"x-gallery-request-id", b"0123456789abcdef0123456789abcdef"),
        ],
        b'{"error":"no token"}',
    )

    class Busy(Unavailable):
        retry_after = 3

    assert error_reply(Busy("a full queue"))[:2] == (
        503,
        [(b"content-type", b"application/json"), (b"retry-after", b"3")],
    )
    assert error_reply(NotFound("no such model"))[1] == [(b"content-type", b"application/json")]
    # the JSON answers of every other route carry the same headers
    assert gallery_error_response(Busy("a full queue")).headers["Retry-After"] == "3"
    assert gallery_error_response(Unauthorized("no token")).headers["WWW-Authenticate"] == "Bearer"
