"""The registry app served by a real uvicorn on a free loopback port, in a background thread."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from uvicorn_thread import served

from gallery_registry.app import create_app_for
from gallery_registry.settings import RegistrySettings


@contextmanager
def serve_registry(settings: RegistrySettings) -> Iterator[str]:
    """Serve a bus-less registry for `settings` (its port must be free); yields the base URL."""
    with served(create_app_for(settings, with_bus=False), settings.port) as port:
        yield f"http://127.0.0.1:{port}"
