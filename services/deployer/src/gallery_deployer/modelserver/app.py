"""The OIP v2 REST app over one ServedModel: a thin adapter over the serving core (`dataplane.py`) and the
explain path (`explaining.py`, `POST .../explain`).

Built on Starlette alone, without `gallery_common.app.create_app`'s middleware: FastAPI's request
parsing, dependency solving and OpenAPI document give a dozen fixed routes nothing, and importing it
cost a sixth of a cold start (87 ms of 0.51 s here). The infer path is a raw ASGI
handler in front of the app (`infer_route.py`): it reads the raw body, parses it with orjson and
answers with pre-encoded bytes, with no per-request logging, routing or Request/Response objects. The
one middleware the rest shares is `AccessMiddleware`: the token (the `inference` role for a model's
routes) and the body's size (`GALLERY_MAX_BODY_BYTES`) are checked before a byte of a body is read,
as the infer handler checks them with the same `admit`; probes, `/v2` and `/metrics` answer without
a token.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gallery_common.access import AccessMiddleware
from gallery_common.artifacts import open_store
from gallery_common.auth import needing, public
from gallery_common.contracts.oip import INFERENCE_HEADER_LENGTH
from gallery_common.errors import GalleryError, error_headers
from gallery_common.settings import Role

from .async_serving import AsyncServing
from .batcher import DynamicBatcher
from .dataplane import DataPlane
from .explaining import Explanations
from .infer_route import InferRoute
from .metrics import ExplainMetrics, ServingMetrics
from .model import ServedModel
from .settings import ModelServerSettings

SERVER_NAME = "modelgallery-modelserver"
JSON = "application/json"
GRPC_GRACE_S = 10.0


@functools.cache
def _server_metadata() -> bytes:
    """The `/v2` document, made at its first request: reading the package's version loads
    importlib.metadata (40 ms of a 0.5 s cold start here)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        server_version = version("modelgallery-deployer")
    except PackageNotFoundError:
        server_version = "0"
    return orjson.dumps({"name": SERVER_NAME, "version": server_version, "extensions": []})


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


def _error(exc: GalleryError) -> Response:
    return _json(exc.status_code, {"error": exc.message}, error_headers(exc))


def create_app(settings: ModelServerSettings, model: ServedModel, registry: CollectorRegistry = REGISTRY) -> Starlette:
    """The model server app; the batcher starts with the app and drains its queue on shutdown."""
    metrics = ServingMetrics(model.name, model.version, model.variant, registry)
    batcher = DynamicBatcher(
        model,
        settings.max_batch_size,
        settings.max_queue_delay_ms / 1000,
        settings.max_queue,
        observer=metrics,
        eager=settings.eager_batching,
    )
    plane = DataPlane(model, batcher, metrics)
    store = open_store(settings.resolved_artifact_root, settings)
    explanations = Explanations(
        plane, settings, store, ExplainMetrics(model.name, model.version, model.variant, registry)
    )
    nats_side = AsyncServing(settings, plane, store) if settings.serve_nats else None

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        plane.start()
        if nats_side is not None:
            nats_side.start()
        grpc_server = None
        if settings.grpc_port:
            from .grpc_front import serve_grpc  # grpcio is imported only where gRPC is served

            grpc_server = await serve_grpc(settings, plane, _server_metadata())
        try:
            yield
        finally:
            plane.ready = False  # probes fail first, so traffic moves away while the rest drains
            if grpc_server is not None:
                await grpc_server.stop(GRPC_GRACE_S)  # calls in flight finish; the batcher still runs
            if nats_side is not None:
                await nats_side.close()
            await explanations.close()
            await plane.close()

    # No OpenTelemetry middleware: the model server exports no traces, and checking for a tracer provider on
    # every request cost about as much CPU as the request's own metrics (py-spy, b32 c1).

    @public
    async def live(_: Request) -> Response:
        return _json(200, {"live": True})

    @public
    async def ready(_: Request) -> Response:
        # beyond OIP's `ready`: the execution provider serving and why not the preferred one, for the
        # local runtime, which reads them from its readiness probe and reports them in model.deployed
        body = {"ready": plane.ready, "execution_provider": model.execution_provider}
        if model.provider_fallback:
            body["provider_fallback"] = model.provider_fallback
        return _json(200 if plane.ready else 503, body)

    @public
    async def healthz(_: Request) -> Response:
        return _json(200, {"status": "ok"})

    @public
    async def readyz(_: Request) -> Response:
        return _json(200 if plane.ready else 503, {"status": "ok" if plane.ready else "starting"})

    @public
    def prometheus(_: Request) -> Response:  # a plain function: Starlette runs it in its thread pool
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @public
    async def server(_: Request) -> Response:
        return Response(_server_metadata(), media_type=JSON)

    @needing(Role.inference)
    async def model_metadata(request: Request) -> Response:
        params = request.path_params
        return Response(plane.metadata(params["name"], params.get("model_version")), media_type=JSON)

    @needing(Role.inference)
    async def model_ready(request: Request) -> Response:
        params = request.path_params
        plane.check_model(params["name"], params.get("model_version"))
        return _json(200 if plane.ready else 503, {"name": model.name, "ready": plane.ready})

    @needing(Role.inference)
    async def explain(request: Request) -> Response:
        # not a hot path: a GalleryError goes to the app's handler
        started = time.perf_counter()
        body = await request.body()
        params = request.path_params
        answer = await explanations.explain(
            body,
            request.headers.get(INFERENCE_HEADER_LENGTH),
            name=params["name"],
            version=params.get("model_version"),
            started=started,
        )
        return Response(answer, media_type=JSON)

    async def gallery_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, GalleryError)
        return _error(exc)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return _json(exc.status_code, {"error": str(exc.detail)}, dict(exc.headers or {}))

    routes = [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/v2", server, methods=["GET"]),
    ]
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{model_version}"):
        routes += [
            Route(prefix, model_metadata, methods=["GET"]),
            Route(prefix + "/ready", model_ready, methods=["GET"]),
            Route(prefix + "/explain", explain, methods=["POST"]),
        ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={GalleryError: gallery_error, StarletteHTTPException: http_error},
    )
    app.add_middleware(AccessMiddleware, settings=settings, sources=[app.router])
    # outermost: infer requests skip the app's middleware and routing (the hot path, infer_route.py)
    app.add_middleware(InferRoute, plane=plane, settings=settings)
    return app
