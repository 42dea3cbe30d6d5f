"""The registry app served by a real uvicorn on a free loopback port, in a background thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from gallery_registry.app import create_app_for
from gallery_registry.settings import RegistrySettings


@contextmanager
def serve_registry(settings: RegistrySettings) -> Iterator[str]:
    """Serve a bus-less registry for `settings` (its port must be free); yields the base URL."""
    app = create_app_for(settings, with_bus=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the registry did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{settings.port}"
    finally:
        server.should_exit = True
        thread.join(15)
