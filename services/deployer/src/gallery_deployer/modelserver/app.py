"""The OIP v2 REST app over one ServedModel.

Built on FastAPI without `gallery_common.app.create_app`'s middleware: the infer path reads the raw
body, parses it with orjson and answers with pre-encoded bytes, with no per-request logging. The one
middleware it shares is `AccessMiddleware`: the token (the `inference` role for a model's routes)
and the body's size (`GALLERY_MAX_BODY_BYTES`) are checked before a byte of a body is read; probes,
`/v2` and `/metrics` answer without a token.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from gallery_common.access import AccessMiddleware
from gallery_common.artifacts import open_store
from gallery_common.auth import requires
from gallery_common.errors import GalleryError, NotFound
from gallery_common.settings import Role

from .async_serving import AsyncServing
from .batcher import DynamicBatcher, Overloaded
from .metrics import Outcome, ServingMetrics
from .model import ServedModel
from .protocol import InferRequestError, encode_infer_response, parse_infer_request
from .settings import ModelServerSettings

SERVER_NAME = "modelgallery-modelserver"
OPEN = [requires(None)]
INFERENCE = [requires(Role.inference)]
JSON = "application/json"
BINARY = "application/octet-stream"
INFERENCE_HEADER_LENGTH = "Inference-Header-Content-Length"


def _server_version() -> str:
    try:
        return version("modelgallery-deployer")
    except PackageNotFoundError:
        return "0"


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


def _error(exc: GalleryError) -> Response:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Overloaded) else None
    return _json(exc.status_code, {"error": exc.message}, headers)


def _header_length(request: Request) -> int | None:
    value = request.headers.get(INFERENCE_HEADER_LENGTH)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InferRequestError(f"{INFERENCE_HEADER_LENGTH} must be an integer, got {value!r}") from None


def _outcome(exc: GalleryError) -> str:
    if isinstance(exc, Overloaded):
        return Outcome.overloaded
    if isinstance(exc, NotFound):
        return Outcome.not_found
    return Outcome.bad_request if 400 <= exc.status_code < 500 else Outcome.error


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
    state = {"ready": False}

    def observe(exc: GalleryError | None, seconds: float) -> None:
        metrics.request(Outcome.ok if exc is None else _outcome(exc), seconds)

    nats_side = (
        AsyncServing(settings, model, batcher, open_store(settings.resolved_artifact_root, settings), observe)
        if settings.serve_nats
        else None
    )
    metadata = orjson.dumps(
        {
            "name": model.name,
            "versions": [model.version],
            "platform": "onnxruntime_onnx",
            "inputs": [spec.metadata() for spec in model.inputs],
            "outputs": [spec.metadata() for spec in model.outputs],
            "parameters": {"variant": model.variant},
        }
    )
    server_metadata = orjson.dumps({"name": SERVER_NAME, "version": _server_version(), "extensions": []})

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        if nats_side is not None:
            nats_side.start()
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            if nats_side is not None:
                await nats_side.close()
            await batcher.close()

    app = FastAPI(title=f"model server {model.name}:{model.version}", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(AccessMiddleware, settings=settings, sources=[app.router])

    def check_model(name: str, model_version: str | None) -> None:
        if name != model.name:
            raise NotFound(f"model {name!r} is not served here (this server serves {model.name!r})")
        if model_version is not None and model_version != model.version:
            raise NotFound(f"model {name!r} has no version {model_version!r} here (served: {model.version!r})")

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
        return _json(200 if state["ready"] else 503, {"ready": state["ready"]})

    @app.get("/healthz", dependencies=OPEN)
    async def healthz() -> Response:
        return _json(200, {"status": "ok"})

    @app.get("/readyz", dependencies=OPEN)
    async def readyz() -> Response:
        return _json(200 if state["ready"] else 503, {"status": "ok" if state["ready"] else "starting"})

    @app.get("/metrics", dependencies=OPEN)
    def prometheus() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v2", dependencies=OPEN)
    async def server() -> Response:
        return Response(server_metadata, media_type=JSON)

    async def model_metadata(name: str, model_version: str | None = None) -> Response:
        check_model(name, model_version)
        return Response(metadata, media_type=JSON)

    async def model_ready(name: str, model_version: str | None = None) -> Response:
        check_model(name, model_version)
        return _json(200 if state["ready"] else 503, {"name": model.name, "ready": state["ready"]})

    async def infer(request: Request, name: str, model_version: str | None = None) -> Response:
        started = time.perf_counter()
        try:
            check_model(name, model_version)
            body = await request.body()
            parsed = parse_infer_request(body, model.inputs, model.outputs, _header_length(request))
            results = await batcher.submit(parsed.inputs, parsed.rows)
            payload, header_length = encode_infer_response(model.name, model.version, parsed, results, model.outputs)
        except GalleryError as exc:
            metrics.request(_outcome(exc), time.perf_counter() - started)
            return _error(exc)
        metrics.request(Outcome.ok, time.perf_counter() - started)
        if header_length is None:
            return Response(payload, media_type=JSON)
        return Response(payload, media_type=BINARY, headers={INFERENCE_HEADER_LENGTH: str(header_length)})

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{model_version}"):
        app.add_api_route(prefix, model_metadata, methods=["GET"], dependencies=INFERENCE)
        app.add_api_route(prefix + "/ready", model_ready, methods=["GET"], dependencies=INFERENCE)
        app.add_api_route(prefix + "/infer", infer, methods=["POST"], dependencies=INFERENCE)
    return app
