"""The OIP v2 REST app over one ServedModel: a thin adapter over the serving core (`dataplane.py`) and the
explain path (`explaining.py`, `POST .../explain`).

Built on FastAPI without `gallery_common.app.create_app`'s middleware. The infer path is a raw ASGI
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
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from gallery_common.access import AccessMiddleware
from gallery_common.artifacts import open_store
from gallery_common.auth import requires
from gallery_common.contracts.oip import INFERENCE_HEADER_LENGTH
from gallery_common.errors import GalleryError
from gallery_common.settings import Role

from .async_serving import AsyncServing
from .batcher import DynamicBatcher
from .dataplane import DataPlane
from .explaining import Explanations
from .infer_route import InferRoute, error_headers
from .metrics import ExplainMetrics, ServingMetrics
from .model import ServedModel
from .settings import ModelServerSettings

SERVER_NAME = "modelgallery-modelserver"
OPEN = [requires(None)]
INFERENCE = [requires(Role.inference)]
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


def create_app(settings: ModelServerSettings, model: ServedModel, registry: CollectorRegistry = REGISTRY) -> FastAPI:
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
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
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

    # No FastAPI-native OpenTelemetry: the model server exports no traces, and checking for a tracer
    # provider on every request cost about as much CPU as the request's own metrics (py-spy, b32 c1).
    app = FastAPI(
        title=f"model server {model.name}:{model.version}",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.add_middleware(AccessMiddleware, settings=settings, sources=[app.router])
    # outermost: infer requests skip the app's middleware and routing (the hot path, infer_route.py)
    app.add_middleware(InferRoute, plane=plane, settings=settings)

    @app.exception_handler(GalleryError)
    async def gallery_error(_: Request, exc: GalleryError) -> Response:
        return _error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return _json(exc.status_code, {"error": str(exc.detail)}, dict(exc.headers or {}))

    @app.get("/v2/health/live", dependencies=OPEN)
    async def live() -> Response:
        return _json(200, {"live": True})

    @app.get("/v2/health/ready", dependencies=OPEN)
    async def ready() -> Response:
        # beyond OIP's `ready`: the execution provider serving and why not the preferred one, for the
        # local runtime, which reads them from its readiness probe and reports them in model.deployed
        body = {"ready": plane.ready, "execution_provider": model.execution_provider}
        if model.provider_fallback:
            body["provider_fallback"] = model.provider_fallback
        return _json(200 if plane.ready else 503, body)

    @app.get("/healthz", dependencies=OPEN)
    async def healthz() -> Response:
        return _json(200, {"status": "ok"})

    @app.get("/readyz", dependencies=OPEN)
    async def readyz() -> Response:
        return _json(200 if plane.ready else 503, {"status": "ok" if plane.ready else "starting"})

    @app.get("/metrics", dependencies=OPEN)
    def prometheus() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v2", dependencies=OPEN)
    async def server() -> Response:
        return Response(_server_metadata(), media_type=JSON)

    async def model_metadata(name: str, model_version: str | None = None) -> Response:
        return Response(plane.metadata(name, model_version), media_type=JSON)

    async def model_ready(name: str, model_version: str | None = None) -> Response:
        plane.check_model(name, model_version)
        return _json(200 if plane.ready else 503, {"name": model.name, "ready": plane.ready})

    async def explain(request: Request, name: str, model_version: str | None = None) -> Response:
        # not a hot path: a GalleryError goes to the app's handler
        started = time.perf_counter()
        body = await request.body()
        answer = await explanations.explain(
            body, request.headers.get(INFERENCE_HEADER_LENGTH), name=name, version=model_version, started=started
        )
        return Response(answer, media_type=JSON)

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{model_version}"):
        app.add_api_route(prefix, model_metadata, methods=["GET"], dependencies=INFERENCE)
        app.add_api_route(prefix + "/ready", model_ready, methods=["GET"], dependencies=INFERENCE)
        app.add_api_route(prefix + "/explain", explain, methods=["POST"], dependencies=INFERENCE)
    return app
