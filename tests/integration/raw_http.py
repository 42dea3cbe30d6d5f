"""A bare-socket HTTP client that can stop mid-body.

An HTTP library always finishes the body it was given; these helpers send a request's head and a
first chunk and then only listen, to show what a server answers before the rest arrives.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: Any
    seconds: float


def read_answer(sock: socket.socket, started: float) -> RawAnswer:
    """One HTTP/1.1 answer with a Content-Length body, parsed as JSON."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection without answering"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection mid-answer"
        rest += chunk
    return RawAnswer(int(status_line.split()[1]), headers, json.loads(rest[:length]), time.monotonic() - started)


def request_head(method: str, path: str, *, token: str | None = None, length: int | None = None) -> str:
    """A request head without its final blank line; no `length`: a chunked body."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    return "\r\n".join(lines) + "\r\n"


def send_first_chunk(port: int, head: str, chunk: bytes) -> RawAnswer:
    """Send the request head and `chunk` of its body, never the rest, and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(head.encode("latin-1") + b"\r\n" + chunk)
        return read_answer(sock, started)


def chunked(*chunks: bytes) -> bytes:
    """Chunks in chunked transfer coding, without the final zero-length chunk: the body never ends."""
    return b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks)
