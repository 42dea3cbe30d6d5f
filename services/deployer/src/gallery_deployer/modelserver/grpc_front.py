"""OIP v2 over gRPC (`inference.GRPCInferenceService`): a thin adapter over the serving core, beside REST.

Runs on the REST app's event loop (started by its lifespan when GALLERY_GRPC_PORT is set), so its
requests batch together with REST's in the same `DynamicBatcher` and count in the same metrics. The
same rules as REST: probes and server metadata answer without a token, the model's calls need the
`inference` role (the `authorization` metadata: `Bearer <token>`), a message over
GALLERY_MAX_BODY_BYTES is refused (RESOURCE_EXHAUSTED), and errors carry their reason with the gRPC
code of their HTTP status (INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE when overloaded, ...).
ModelStreamInfer (Triton's extension) takes many requests on one stream, up to GALLERY_STREAM_IN_FLIGHT at
once (they batch together like concurrent calls), and answers each as it finishes: a request that fails
gets its reason in `error_message` and the stream goes on.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import orjson
from grpc import aio

from gallery_common.contracts.oip import InferRequest, InferRequestError, ProtocolError, parse_infer_document
from gallery_common.contracts.request_ids import REQUEST_ID_HEADER, call_request_id
from gallery_common.errors import GalleryError
from gallery_common.oip_grpc import codec
from gallery_common.oip_grpc import grpc_predict_v2_pb2 as pb
from gallery_common.oip_grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from gallery_common.oip_grpc.server import abort, authorize, servicer_registration, start_server
from gallery_common.oip_grpc.streams import stream_answers
from gallery_common.telemetry import get_logger

from .dataplane import DataPlane
from .model import ServedModel
from .settings import ModelServerSettings

log = get_logger(__name__)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The model server's `GRPCInferenceService`; `server_metadata` is the REST `/v2` document."""

    def __init__(self, settings: ModelServerSettings, plane: DataPlane, server_metadata: bytes) -> None:
        self._settings = settings
        self._plane = plane
        server = orjson.loads(server_metadata)
        self._server_metadata = pb.ServerMetadataResponse(
            name=server["name"], version=server["version"], extensions=server["extensions"]
        )
        self._model_metadata = codec.metadata_response(orjson.loads(plane.metadata(plane.model.name)))

    async def ServerLive(self, request: pb.ServerLiveRequest, context: aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._plane.ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return self._server_metadata

    async def ModelReady(self, request: pb.ModelReadyRequest, context: aio.ServicerContext) -> pb.ModelReadyResponse:
        try:
            authorize(self._settings, context)
            self._plane.check_model(request.name, request.version or None)
        except GalleryError as exc:
            await abort(context, exc)
        return pb.ModelReadyResponse(ready=self._plane.ready)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        try:
            authorize(self._settings, context)
            self._plane.check_model(request.name, request.version or None)
        except GalleryError as exc:
            await abort(context, exc)
        return self._model_metadata

    async def ModelInfer(self, request: pb.ModelInferRequest, context: aio.ServicerContext) -> pb.ModelInferResponse:
        try:
            authorize(self._settings, context)
            request_id = call_request_id(context.invocation_metadata() or (), request.id)
            response = await self._infer(request, request_id)
        except GalleryError as exc:
            await abort(context, exc)
        context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
        return response

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        try:
            authorize(self._settings, context)
        except GalleryError as exc:
            await abort(context, exc)

        async def one(request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
            try:
                # the stream's metadata names no single request: each has its own id, or is given one
                response = await self._infer(request, call_request_id((), request.id))
            except GalleryError as exc:
                return pb.ModelStreamInferResponse(
                    error_message=exc.message, infer_response=pb.ModelInferResponse(id=request.id)
                )
            return pb.ModelStreamInferResponse(infer_response=response)

        async for answer in stream_answers(
            request_iterator, one, in_flight=self._settings.stream_in_flight, on_error=_stream_error
        ):
            yield answer

    async def _infer(self, request: pb.ModelInferRequest, request_id: str) -> pb.ModelInferResponse:
        """One request's answer; GalleryError says why it has none."""
        started = time.perf_counter()

        def read(model: ServedModel) -> InferRequest:
            try:
                document, binary = codec.request_document(request)
            except ProtocolError as exc:
                raise InferRequestError(str(exc)) from None
            return parse_infer_document(document, model.inputs, model.outputs, binary)

        plane = self._plane
        if not request.id:  # the answer's `id` names the request
            request.id = request_id
        parsed, results = await plane.infer_tensors(
            read, name=request.model_name, version=request.model_version or None, started=started
        )
        model = plane.model
        return codec.served_response(model.name, model.version, parsed, results, model.outputs)


def _stream_error(exc: Exception) -> pb.ModelStreamInferResponse:
    log.error("stream request failed", error=repr(exc))
    return pb.ModelStreamInferResponse(error_message="internal error")


async def serve_grpc(settings: ModelServerSettings, plane: DataPlane, server_metadata: bytes) -> aio.Server:
    """Start the gRPC front on GALLERY_GRPC_PORT (on the running event loop)."""
    servicer = InferenceServicer(settings, plane, server_metadata)
    server, _ = await start_server(
        servicer_registration(servicer), settings.bind_host, settings.grpc_port, settings.max_body_bytes
    )
    return server
