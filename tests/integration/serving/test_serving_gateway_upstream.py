"""The gateway's backend client against real sockets: every way an HTTP/1.1 answer can be framed,
keep-alive reuse, a backend that closes idle connections, and the errors the fallback chain tells apart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from gallery_common.netutil import free_port
from gallery_deployer.gateway.upstream import ConnectFailed, Disconnected, UpstreamPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request's head and body (Content-Length framed, as the client sends them)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length"))
    return head, await reader.readexactly(length)


@asynccontextmanager
async def backend(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A raw HTTP server on loopback; yields its URL and a list that counts its connections."""
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", connections
    finally:
        server.close()


def answering(raw: bytes) -> Handler:
    """A handler that reads one request, writes `raw` and closes the connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()

    return handle


async def echo_keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers each request on the connection: first with Content-Length, then chunked, alternating."""
    chunked = False
    while True:
        head, body = await read_request(reader)
        answer = b"echo:" + body + b":" + head.split(b" ")[1]
        if chunked:
            half = len(answer) // 2
            parts = [answer[:half], answer[half:]]
            framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n" + framed)
        else:
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\nX-Kind: a\r\nX-Kind: b\r\n\r\n" % len(answer))
            writer.write(answer)
        await writer.drain()
        chunked = not chunked


async def test_answers_framed_by_length_or_chunks_come_back_whole_over_one_connection() -> None:
    pool = UpstreamPool(max_connections=4)
    async with backend(echo_keep_alive) as (url, connections):
        first = await pool.request("POST", f"{url}/v2/models/m/infer", b"abc", {"content-type": "x"}, 5)
        second = await pool.request("POST", f"{url}/v2/models/m/infer", b"defg", {}, 5)
        third = await pool.request("GET", f"{url}/v2/models/m/ready", b"", {}, 5)
    await pool.close()
    assert (first.status_code, first.content, first.headers["x-kind"]) == (201, b"echo:abc:/v2/models/m/infer", "a, b")
    assert (second.status_code, second.content) == (200, b"echo:defg:/v2/models/m/infer")
    assert third.content == b"echo::/v2/models/m/ready"
    assert len(connections) == 1  # kept alive


async def test_an_answer_without_a_length_ends_with_the_connection_and_is_not_reused() -> None:
    until_close = answering(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
    pool = UpstreamPool(max_connections=4)
    async with backend(until_close) as (url, connections):
        answers = [await pool.request("POST", f"{url}/x", b"1", {}, 5) for _ in range(2)]
    assert [a.content for a in answers] == [b"all of it", b"all of it"]
    assert len(connections) == 2


async def test_a_connection_the_backend_closed_while_idle_is_replaced_without_failing_the_request() -> None:
    async def one_answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # says keep-alive
        await writer.drain()
        await read_request(reader)  # and closes with the next request unanswered, as at its idle timeout

    pool = UpstreamPool(max_connections=4)
    async with backend(one_answer_then_close) as (url, connections):
        for _ in range(3):
            assert (await pool.request("POST", f"{url}/x", b"1", {}, 5)).content == b"ok"
    assert len(connections) == 3  # requests 2 and 3 each found their connection closed and took a new one


async def test_time_limit_refused_connection_and_a_cut_off_answer_are_told_apart() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(30)

    cut_off = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
    pool = UpstreamPool(max_connections=4)
    async with backend(silent) as (url, _):
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await pool.request("POST", f"{url}/x", b"1", {}, 0.3)
        assert 0.25 < loop.time() - started < 5
    async with backend(cut_off) as (url, _):
        with pytest.raises(Disconnected):
            await pool.request("POST", f"{url}/x", b"1", {}, 5)
    with pytest.raises(ConnectFailed):
        await pool.request("POST", f"http://127.0.0.1:{free_port()}/x", b"1", {}, 5)


async def test_requests_over_the_limit_wait_for_a_free_connection() -> None:
    in_flight: list[int] = []
    most = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal most
        while True:
            await read_request(reader)
            in_flight.append(1)
            most = max(most, len(in_flight))
            await asyncio.sleep(0.05)
            in_flight.pop()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    pool = UpstreamPool(max_connections=2)
    async with backend(slow) as (url, _):
        answers = await asyncio.gather(*(pool.request("POST", f"{url}/x", b"1", {}, 5) for _ in range(6)))
    assert [a.content for a in answers] == [b"ok"] * 6
    assert most == 2


async def test_a_header_that_would_smuggle_another_is_refused_before_anything_is_sent() -> None:
    pool = UpstreamPool(max_connections=1)
    async with backend(echo_keep_alive) as (url, connections):
        with pytest.raises(ValueError, match="line break"):
            await pool.request("POST", f"{url}/x", b"1", {"x-session": "a\r\nauthorization: Bearer stolen"}, 5)
        assert (await pool.request("POST", f"{url}/x", b"1", {"x-session": "a"}, 5)).content == b"echo:1:/x"
    assert len(connections) == 1  # the refused request never opened one
