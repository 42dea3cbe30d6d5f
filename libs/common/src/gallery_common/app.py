"""The FastAPI app factory every service uses.

`create_app(settings, ...)` gives an app whose lifespan opens the bus, the artifact store and the
database and closes them on shutdown, with `/healthz`, `/readyz`, `/metrics`, bearer-token auth and
a body-size limit checked before a body is read (`access.AccessMiddleware`), and domain errors
mapped once to HTTP answers of the form `{"error": "..."}`.

A service's `startup(resources, stack)` builds its core on what the lifespan opened, registers what
it starts on `stack` and returns the core; at shutdown everything stops in the reverse order it
started (the service's parts, then the bus, then the database), whatever failed on the way up.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from .access import ROUTE_SCOPE_KEY, AccessMiddleware, gallery_error_response
from .artifacts import ArtifactStore, open_store
from .auth import requires
from .bus import EventBus
from .errors import GalleryError, Unavailable
from .nats_auth import publishes_events
from .settings import GallerySettings
from .telemetry import configure_logging, configure_tracing, counter, get_logger, histogram

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from .audit_trail import AuditTrail

log = get_logger(__name__)

HTTP_REQUESTS = counter("http_requests_total", "HTTP requests answered", ("service", "method", "route", "status"))
HTTP_DURATION = histogram("http_request_duration_seconds", "HTTP request duration", ("service", "method", "route"))


T = TypeVar("T")


@dataclass
class ServiceResources:
    """What the lifespan opened, and the core the service's startup built; routes reach it through `deps.py`."""

    settings: GallerySettings
    bus: EventBus | None = None
    store: ArtifactStore | None = None
    engine: Engine | None = None
    # what `startup` returned (the service's own typed object); None while the service starts or stops
    core: object | None = None
    # where the service records its changes, once its startup opened it (shared routes record there too)
    trail: AuditTrail | None = None
    # dependencies reported by /readyz that do not decide readiness (the data plane's bus)
    optional: set[str] = field(default_factory=set)

    def core_as(self, kind: type[T]) -> T:
        """The service's core, which must be a `kind`; Unavailable while the service starts or stops."""
        core = self.core
        if not isinstance(core, kind):
            raise Unavailable(f"the {self.settings.service_name} is starting or stopping")
        return core


# Builds the service's core on what the lifespan opened, registers what it starts on the stack
# (each cleanup runs at shutdown, last registered first) and returns the core.
Startup = Callable[[ServiceResources, AsyncExitStack], Awaitable[object]]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:10]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "invalid request: " + "; ".join(parts)


def install_error_handlers(app: FastAPI, *, database: bool = False) -> None:
    """Map every error once: domain errors to their status, validation to 422, the rest to 500; with
    `database`, an unreachable database to 503 (SQLAlchemy loads only in services that keep one)."""

    @app.exception_handler(GalleryError)
    async def _gallery_error(_: Request, exc: GalleryError) -> JSONResponse:
        return gallery_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    if database:
        _install_database_handlers(app)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", path=request.url.path, exc_info=exc)
        return _error(500, "internal error; the service log has the details")


def _install_database_handlers(app: FastAPI) -> None:
    from .db import DATABASE_RETRY_AFTER_S, DATABASE_UNAVAILABLE

    async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # a database restart is an outage to wait out, not a server error: 503 and when to try again
        log.warning("database unavailable", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
        message = "the database is unavailable; try again shortly"
        return _error(503, message, {"Retry-After": str(DATABASE_RETRY_AFTER_S)})

    for unavailable in DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable, _database_unavailable)


class MetricsMiddleware:
    """Counts and times every request by route template (not raw path, to bound cardinality)."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # requests answered before routing (refused, or the gateway's fast path) carry the
            # template AccessMiddleware matched
            route = getattr(scope.get("route"), "path", None) or scope.get(ROUTE_SCOPE_KEY, "unmatched")
            method = scope["method"]
            HTTP_REQUESTS.labels(self.service, method, route, str(status)).inc()
            HTTP_DURATION.labels(self.service, method, route).observe(time.perf_counter() - start)


async def readiness(resources: ServiceResources) -> dict[str, str]:
    """Each dependency's state: 'ok' or a short reason it is not.

    /readyz answers without a token, so the reason never carries the exception's text (it can hold
    hosts, paths, credentials in a URL); the log has it.
    """
    checks: dict[str, str] = {}
    if resources.bus is not None:
        checks["nats"] = "ok" if resources.bus.is_connected else "disconnected"
    if resources.store is not None:
        try:
            await anyio.to_thread.run_sync(resources.store.exists, ".readyz")
            checks["artifacts"] = "ok"
        except Exception as exc:
            log.warning("readiness check failed", dependency="artifacts", reason=f"{type(exc).__name__}: {exc}")
            checks["artifacts"] = "unreachable"
    if resources.engine is not None:
        from .db import ping

        try:
            await anyio.to_thread.run_sync(ping, resources.engine)
            checks["database"] = "ok"
        except Exception as exc:
            log.warning("readiness check failed", dependency="database", reason=f"{type(exc).__name__}: {exc}")
            checks["database"] = "unreachable"
    return checks


def _ops_router() -> APIRouter:
    # probes and scrapers carry no token
    router = APIRouter(tags=["operations"], dependencies=[requires(None)])

    @router.get("/healthz")
    async def healthz(request: Request) -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok", "service": request.app.state.settings.service_name}

    @router.get("/readyz")
    async def readyz(request: Request) -> Response:
        """Readiness: every dependency this service opened answers."""
        resources: ServiceResources = request.app.state.resources
        checks = await readiness(resources)
        required = [state for name, state in checks.items() if name not in resources.optional]
        ready = getattr(request.app.state, "started", False) and all(state == "ok" for state in required)
        body = {"status": "ready" if ready else "not ready", "checks": checks}
        return JSONResponse(body, status_code=200 if ready else 503)

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


def _stopping(app: FastAPI, resources: ServiceResources) -> None:
    app.state.started = False
    resources.core = None


def create_app(
    settings: GallerySettings,
    *,
    title: str,
    routers: Sequence[APIRouter] = (),
    use_bus: bool = True,
    bus_required: bool = True,
    use_store: bool = False,
    use_database: bool = False,
    startup: Startup | None = None,
    description: str | None = None,
    untraced: Callable[[MutableMapping[str, Any]], bool] | None = None,
    inner_middleware: Sequence[Middleware] = (),
    app_class: type[FastAPI] = FastAPI,
) -> FastAPI:
    """Build a service app; nothing connects until the lifespan runs.

    `startup(resources, stack)` runs once the database, store and bus are open: what it returns is
    the service's core (`resources.core_as(Kind)`), what it registers on `stack` stops at shutdown
    before them, last registered first.

    With `bus_required=False` the app starts and reports ready without NATS: the bus connects in the
    background (no streams are ensured) and /readyz shows its state without being held back by it.
    `untraced(scope)` names requests FastAPI's own OpenTelemetry spans and metrics skip (hot paths).
    Each request passes the metrics, then the access checks (auth, role, body size), then
    `inner_middleware` in order, then FastAPI's routing. `app_class` is a FastAPI subclass to build
    instead (the gateway's, which answers inference before all of this).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.service_name, settings.log_level)
        configure_tracing(settings.service_name, settings.otlp_endpoint)
        verifier = settings.token_verifier()
        if verifier is not None:
            verifier.prefetch()  # the issuer's keys before the first token, without holding up the start
        resources: ServiceResources = app.state.resources
        async with AsyncExitStack() as stack:
            stack.callback(log.info, "service stopped")
            if use_database:
                from .db import make_engine

                resources.engine = make_engine(settings.resolved_database_url)
                stack.callback(resources.engine.dispose)
            if use_store:
                resources.store = await anyio.to_thread.run_sync(open_store, settings.resolved_artifact_root, settings)
            if use_bus:
                bus = resources.bus = EventBus.from_settings(settings, source=f"/modelgallery/{settings.service_name}")
                stack.push_async_callback(bus.close)
                if bus_required:
                    await bus.connect()
                else:
                    resources.optional.add("nats")
                    bus.connect_in_background(ensure_streams=False)
                from .projects_kv import follow_projects

                # who is a member of which project, for every request's access check
                stack.push_async_callback(follow_projects(bus, settings.project_directory()).close)
            if startup is not None:
                resources.core = await startup(resources, stack)
            # the first thing shutdown does: routes answer 503 and /readyz "not ready" from here on
            stack.callback(_stopping, app, resources)
            app.state.started = True
            log.info("service started", host=settings.bind_host, port=settings.port)
            yield

    app = app_class(
        title=title,
        version=__version__,
        description=description or "",
        lifespan=lifespan,
        telemetry={"exclude": untraced},
    )
    app.state.settings = settings
    app.state.resources = ServiceResources(settings=settings)
    app.state.started = False
    install_error_handlers(app, database=use_database)
    ops = _ops_router()
    if use_bus and publishes_events(settings.service_name):
        from .dead_letters_api import router as dead_letters

        routers = [*routers, dead_letters]
    # add_middleware puts each one in front of those added before it: innermost first
    for middleware in reversed(inner_middleware):
        app.add_middleware(middleware.cls, *middleware.args, **middleware.kwargs)
    app.add_middleware(AccessMiddleware, settings=settings, sources=[ops, *routers])
    app.add_middleware(MetricsMiddleware, service=settings.service_name)
    app.include_router(ops)
    for router in routers:
        app.include_router(router)
    return app
