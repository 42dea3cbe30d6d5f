"""uvicorn's httptools protocol, writing each response to the socket in one piece.

uvicorn writes a response's status line and headers as soon as the app sends `http.response.start`, and
its body in a second write. On loopback with TCP_NODELAY that is two segments, two system calls, and a
client that often wakes up twice for one answer; on a virtual machine, waking a sleeping peer is the
dearest part of a small request (measured here: a proxy at concurrency 1 spent ~25 us of its ~165 us
per request on the second write). `OneWriteHttpToolsProtocol` collects what the protocol writes during
one turn of the event loop and writes it at the end of that turn: headers and body go out together,
and nothing waits longer than the current callback.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


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
    """`uvicorn.run(app, http=OneWriteHttpToolsProtocol, ...)`: httptools, one write per response."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        one_write = _OneWriteTransport(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        super().connection_made(one_write)  # type: ignore[arg-type]
