"""Run one installed service: `python -m gallery_common.serve NAME`.

The port is `GALLERY_PORT` when set, else the service's default; the host is
`GallerySettings.bind_host` (loopback unless API tokens are configured).
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from .settings import GallerySettings, SettingsError, load_settings
from .telemetry import configure_logging

T = TypeVar("T")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def built_without_collection(build: Callable[[], T]) -> T:
    """`build()` with garbage collection off, then what it built frozen (never scanned again).

    A service's app, its modules and classes live until exit; collecting them again and again while
    they are imported costs its start CPU for nothing.
    """
    gc.disable()
    try:
        built = build()
        gc.freeze()
        return built
    finally:
        gc.enable()


def main(argv: list[str] | None = None) -> int:
    """Serve the named service until SIGTERM/SIGINT; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m gallery_common.serve", description=__doc__)
    parser.add_argument("name", help="service name, as advertised in the modelgallery.services entry points")
    args = parser.parse_args(argv)

    # Launched by hand, the service should still know its own name (logs, default database file).
    os.environ.setdefault("GALLERY_SERVICE_NAME", args.name)
    try:
        settings = load_settings(GallerySettings)
    except SettingsError as exc:
        print(exc.code, file=sys.stderr)
        return 2
    # services are found through entry points (importlib.metadata): loaded here, not by a model server
    # that imports this module for its server and pays for it in its cold start
    from .service import ServiceSpecError, find_service, service_names

    try:
        spec = find_service(args.name)
    except ServiceSpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    if spec is None:
        installed = ", ".join(service_names()) or "none"
        print(f"no service named {args.name!r} is installed (installed: {installed})", file=sys.stderr)
        return 2

    port = settings.port if "GALLERY_PORT" in os.environ else spec.port
    host = settings.bind_host
    if not settings.auth_enabled and not is_loopback(settings.host):
        print(
            f"warning: GALLERY_HOST={settings.host} ignored: no GALLERY_API_TOKENS configured, "
            f"so {spec.name} binds to {host} only",
            file=sys.stderr,
        )

    import uvicorn

    from .http_server import OneWriteHttpToolsProtocol

    # Until the app's lifespan configures logging, uvicorn's own lines (bind errors) still reach the log.
    configure_logging(spec.name, settings.log_level)
    uvicorn.run(
        built_without_collection(spec.create_app),
        host=host,
        port=port,
        loop="uvloop",
        http=OneWriteHttpToolsProtocol,  # httptools, each response in one write
        ws="none",  # no service speaks WebSocket: uvicorn then loads no WebSocket library at start
        log_config=None,
        access_log=False,
        # Bounded, so lifespan shutdown (draining the bus) still runs when a client holds a connection.
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
