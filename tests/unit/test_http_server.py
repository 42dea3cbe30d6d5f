"""`OneWriteHttpToolsProtocol`: what uvicorn writes for one response reaches the socket in one write, in
order, and nothing is lost on close or sent after an abort; served by uvicorn, answers stay whole."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from gallery_common.http_server import OneWriteHttpToolsProtocol, _OneWriteTransport
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


@contextmanager
def one_write_server() -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=OneWriteHttpToolsProtocol, log_level="warning")
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
