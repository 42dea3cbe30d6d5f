"""An ASGI app served by uvicorn in a thread of the test process, on a loopback port, until the block ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import httpx
import uvicorn

from gallery_common.http_server import OneWriteHttpToolsProtocol
from gallery_common.netutil import free_port


@contextmanager
def running(
    app: Any,
    port: int | None = None,
    *,
    ready_path: str | None = None,
    join_s: float = 30.0,
    http: Any = OneWriteHttpToolsProtocol,
) -> Iterator[uvicorn.Server]:
    """Serve `app` (on `port`, or a free one) and yield the server once it listens, and, with
    `ready_path`, once that path answers 200; it stops when the block ends. `http`: uvicorn's HTTP
    protocol, by default the one `python -m gallery_common.serve` serves every service with (the
    gateway's inference takes its direct path)."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port or free_port(), log_level="warning", http=http)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.config.port}"
    deadline = time.monotonic() + 30
    while not _ready(server, url, ready_path):
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the app on {url} did not become ready")
        time.sleep(0.02)
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(join_s)


def _ready(server: uvicorn.Server, url: str, ready_path: str | None) -> bool:
    if not server.started:
        return False
    if ready_path is None:
        return True
    with suppress(httpx.HTTPError):
        return httpx.get(url + ready_path, timeout=2).status_code == 200
    return False


@contextmanager
def served(app: Any, port: int | None = None, *, ready_path: str | None = None, join_s: float = 30.0) -> Iterator[int]:
    """`running`, yielding the port."""
    with running(app, port, ready_path=ready_path, join_s=join_s) as server:
        yield server.config.port
