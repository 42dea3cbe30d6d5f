"""The gateway's OIP v2 gRPC front (`inference.GRPCInferenceService`, GALLERY_GRPC_PORT).

ModelInfer takes the REST route's policy: the model's route (a sleeping model is woken), the version
filter, the weighted and sticky choice (the sticky header is read from the call's metadata), the
fallback chain, the circuit breakers and the inference metrics. The request is parsed once, for the
model's name. By default (GALLERY_GRPC_FORWARD=rest) its tensors go to the backend's REST API as binary
tensors, through the REST side's client, and the answer is turned into a `ModelInferResponse`: with
grpcio's Python server and client on both ends a gRPC hop measured dearer than a REST one, for the
gateway and even more for the model server. With `grpc` the bytes that came in go to a backend's gRPC
address (`Backend.grpc`; REST where the route gives none) and its answer goes back as it came.
Metadata and readiness go over REST (`Gateway.forward_get`). gRPC traffic is sampled for the monitor like
REST's, but not cached or mirrored to a shadow. ModelStreamInfer (Triton's extension) forwards each request
of a stream the same way, up to GALLERY_STREAM_IN_FLIGHT at once, and streams each answer back when ready.
Every call needs the `inference` role, as on the REST side.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc
import orjson
from grpc import aio

from gallery_common import __version__
from gallery_common.auth import Caller
from gallery_common.contracts.oip import (
    INFERENCE_HEADER_LENGTH,
    ProtocolError,
    decode_infer_inputs,
    decode_infer_response,
    json_tensors,
)
from gallery_common.contracts.request_ids import (
    REQUEST_ID_HEADER,
    call_request_id,
    checked_request_id,
    new_request_id,
)
from gallery_common.errors import BadRequest, GalleryError
from gallery_common.oip_grpc import codec
from gallery_common.oip_grpc import grpc_predict_v2_pb2 as pb
from gallery_common.oip_grpc.server import abort, authorize, start_server, status_of
from gallery_common.oip_grpc.streams import stream_answers
from gallery_common.telemetry import get_logger

from . import metrics
from .balance import plan_chain
from .proxy import Attempt, Gateway
from .routes import Backend
from .settings import GatewaySettings
from .upstream import Answer
from .usage import rows_and_seconds

log = get_logger(__name__)

SERVICE = "inference.GRPCInferenceService"
BINARY_HEADER = INFERENCE_HEADER_LENGTH.lower()
SERVER_NAME = "modelgallery-gateway"
# a backend's answer with one of these codes is the client's to hear (as a REST 4xx): no fallback, no breaker
GATEWAY_REFUSED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
CLIENT_ERRORS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)


class GrpcAnswer:
    """A backend's gRPC error answer, passed on to the client with its code and details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details


@dataclass
class GrpcAttempt(Attempt):
    """A link tried for a gRPC request: its answer as the client gets it (bytes, or an error to pass on)."""

    answer: bytes | GrpcAnswer | None = None


def _raw(data: bytes) -> bytes:
    return data


def _field(number: int, value: bytes) -> bytes:
    """A length-delimited protobuf field (a string, bytes or an embedded message) as bytes: messages are
    put together from serialized parts without parsing them again."""
    size = len(value)
    varint = bytearray()
    while size >= 0x80:
        varint.append((size & 0x7F) | 0x80)
        size >>= 7
    varint.append(size)
    return bytes([number << 3 | 2]) + bytes(varint) + value


def _id_field(request_id: str) -> bytes:
    """`id` (field 3, a string) as protobuf bytes: appended to a serialized ModelInferRequest without one, it
    sets the request's id (the backend's answer echoes it) without parsing and serializing the message again."""
    return _field(3, request_id.encode("ascii"))


def stream_error(reason: str) -> bytes:
    """A serialized ModelStreamInferResponse that says why its request failed (`error_message`, field 1)."""
    return _field(1, reason.encode("utf-8"))


def _internal_stream_error(exc: Exception) -> bytes:
    log.error("stream request failed", error=repr(exc))
    return stream_error("internal error")


def _error(exc: GalleryError) -> GrpcAnswer:
    return GrpcAnswer(status_of(exc.status_code), exc.message)


class BackendChannels:
    """One gRPC channel per backend address, opened on first use and closed with the gateway."""

    def __init__(self, max_message_bytes: int) -> None:
        self._options = [("grpc.max_send_message_length", max_message_bytes), ("grpc.max_receive_message_length", -1)]
        self._infer: dict[str, Callable[..., Awaitable[bytes]]] = {}
        self._channels: list[aio.Channel] = []

    def infer(self, target: str) -> Callable[..., Awaitable[bytes]]:
        """ModelInfer on `target`, bytes in and bytes out."""
        call = self._infer.get(target)
        if call is None:
            channel = aio.insecure_channel(target, options=self._options)
            self._channels.append(channel)
            call = self._infer[target] = channel.unary_unary(
                f"/{SERVICE}/ModelInfer", request_serializer=_raw, response_deserializer=_raw
            )
        return call

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        self._channels.clear()
        self._infer.clear()


class GatewayServicer:
    """The gateway's `GRPCInferenceService`, its ModelInfer taking and giving bytes."""

    def __init__(self, settings: GatewaySettings, gateway: Gateway, started: Callable[[], bool]) -> None:
        self._settings = settings
        self._gateway = gateway
        self._started = started
        self._native = settings.grpc_forward == "grpc"
        self.channels = BackendChannels(settings.max_body_bytes)

    def handler(self) -> grpc.GenericRpcHandler:
        """Every method of the service, ModelInfer with raw bytes in and out."""

        def typed(behaviour: Callable[..., Any], request: Any, response: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                behaviour, request_deserializer=request.FromString, response_serializer=response.SerializeToString
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "ServerLive": typed(self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
                "ServerReady": typed(self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
                "ServerMetadata": typed(self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
                "ModelReady": typed(self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
                "ModelMetadata": typed(self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
                "ModelInfer": grpc.unary_unary_rpc_method_handler(
                    self.model_infer, request_deserializer=_raw, response_serializer=_raw
                ),
                "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                    self.model_stream_infer, request_deserializer=_raw, response_serializer=_raw
                ),
            },
        )

    async def _authorize(self, context: aio.ServicerContext) -> Caller:
        try:
            return authorize(self._settings, context)
        except GalleryError as exc:
            await abort(context, exc)

    async def server_live(self, request: pb.ServerLiveRequest, context: aio.ServicerContext) -> pb.ServerLiveResponse:
        await self._authorize(context)
        return pb.ServerLiveResponse(live=True)

    async def server_ready(
        self, request: pb.ServerReadyRequest, context: aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        await self._authorize(context)
        return pb.ServerReadyResponse(ready=self._started())

    async def server_metadata(
        self, request: pb.ServerMetadataRequest, context: aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        await self._authorize(context)
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__)

    async def _forward_get(self, context: aio.ServicerContext, model: str, version: str, what: str) -> Any:
        """The backend's REST answer to GET /v2/models/{model}[/versions/{version}]{what} as JSON."""
        caller = await self._authorize(context)
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + what
        try:
            response = await self._gateway.forward_get(model, version or None, path, caller)
        except GalleryError as exc:
            await abort(context, exc)
        document = orjson.loads(bytes(response.body))
        if response.status_code >= 400 and not (
            what == "/ready" and response.status_code == 503 and "ready" in document
        ):
            await context.abort(status_of(response.status_code), str(document.get("error", document)))
        return document

    async def model_ready(self, request: pb.ModelReadyRequest, context: aio.ServicerContext) -> pb.ModelReadyResponse:
        document = await self._forward_get(context, request.name, request.version, "/ready")
        return pb.ModelReadyResponse(ready=document.get("ready") is True)

    async def model_metadata(
        self, request: pb.ModelMetadataRequest, context: aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        return codec.metadata_response(await self._forward_get(context, request.name, request.version, ""))

    async def model_infer(self, data: bytes, context: aio.ServicerContext) -> bytes:
        caller = await self._authorize(context)
        metadata = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
        try:
            given = checked_request_id(metadata[REQUEST_ID_HEADER]) if REQUEST_ID_HEADER in metadata else None
        except GalleryError as exc:
            await abort(context, exc)
        answer, request_id = await self._infer(data, metadata, caller, given)
        context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
        if isinstance(answer, GrpcAnswer):
            await context.abort(answer.code, answer.details)
            raise AssertionError("context.abort returned")
        return answer

    async def model_stream_infer(
        self, requests: AsyncIterator[bytes], context: aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """ModelStreamInfer: each request of the stream walks its model's route as a ModelInfer call does, up to
        GALLERY_STREAM_IN_FLIGHT at once; each answer (or the reason a request failed) goes back as a
        ModelStreamInferResponse when it is ready."""
        caller = await self._authorize(context)
        # the stream's metadata (a sticky header) holds for each request; a request id in it names none of them
        metadata = {
            key: value
            for key, value in context.invocation_metadata() or ()
            if isinstance(value, str) and key != REQUEST_ID_HEADER
        }

        async def one(data: bytes) -> bytes:
            answer, _ = await self._infer(data, metadata, caller, None)
            if isinstance(answer, GrpcAnswer):
                return stream_error(answer.details)
            return _field(2, answer)

        async for answer in stream_answers(
            requests, one, in_flight=self._settings.stream_in_flight, on_error=_internal_stream_error
        ):
            yield answer

    async def _infer(
        self, data: bytes, metadata: dict[str, str], caller: Caller, request_id: str | None
    ) -> tuple[bytes | GrpcAnswer, str]:
        """One ModelInfer request (serialized) forwarded: the backend's answer as bytes, or the error to give
        the client; and the request's id (`request_id`, else the message's own, else a new one)."""
        start = time.perf_counter()
        gateway = self._gateway
        try:
            request = pb.ModelInferRequest.FromString(data)
        except Exception as exc:  # protobuf's DecodeError: not a ModelInferRequest at all
            return _error(BadRequest(f"the message is not a ModelInferRequest: {exc}")), request_id or new_request_id()
        if request_id is None:
            request_id = call_request_id((), request.id)
        model = request.model_name
        try:
            route, serving = await gateway._route(model, request.model_version or None, caller)
        except GalleryError as exc:
            return _error(exc), request_id
        if not request.id:  # the answer's `id` names the request, whichever way it is forwarded
            request.id = request_id
            data += _id_field(request_id)
        chain = plan_chain(serving, gateway._sticky_key(route, metadata, {}), gateway.rng)
        # an answer to keep for feedback is read from its REST body
        native = self._native and not route.policy.record_outcomes
        attempt, failures = await self._walk(model, chain, data, request, native)
        metrics.LATENCY.labels(model).observe(time.perf_counter() - start)
        answer = attempt.answer if attempt is not None else None
        if isinstance(answer, bytes):
            assert attempt is not None
            rows, seconds = rows_and_seconds(attempt.response.headers) if attempt.response is not None else (0, 0.0)
            if attempt.response is None and request.inputs and request.inputs[0].shape:
                rows = request.inputs[0].shape[0]  # forwarded over gRPC: the backend reports no cost
            gateway.usage.record(model, attempt.backend.version, caller.name, rows, seconds)
            if route.policy.record_outcomes and attempt.response is not None:
                regression = route.task == "regression"
                gateway.record_answer(
                    request_id, model, attempt.backend, caller.name, attempt.response, regression=regression
                )
            gateway.sample(model, attempt.backend, time.perf_counter() - start, partial(grpc_tensors, request, answer))
            return answer, request_id
        if isinstance(answer, GrpcAnswer):
            return answer, request_id
        reasons = "; ".join(f"{f.backend.id}: {f.reason}" for f in failures)
        status = 502 if any(f.outcome == "server_error" for f in failures) else 503
        metrics.FAILURES.labels(model, str(status)).inc()
        return GrpcAnswer(status_of(status), f"no backend of model {model!r} could answer: {reasons}"), request_id

    async def _walk(
        self, model: str, chain: list[Backend], data: bytes, request: pb.ModelInferRequest, native: bool
    ) -> tuple[GrpcAttempt | None, list[Attempt]]:
        """Try the links as REST inference does (`Gateway.walk`: the same budgets, breakers and counters), each
        over gRPC where the backend has an address for it and forwarding is `native`, else over its REST API."""

        async def try_link(backend: Backend, timeout: float) -> Attempt:
            if backend.grpc is not None and native:
                outcome, reason, answer = await self._grpc_attempt(backend.grpc, data, timeout)
                return GrpcAttempt(backend, outcome, reason, answer=answer)
            outcome, reason, answer, reply = await self._rest_attempt(backend, request, timeout)
            return GrpcAttempt(backend, outcome, reason, reply, answer=answer)

        gateway = self._gateway
        attempt, failures = await gateway.walk(model, chain, gateway._inference, try_link)
        return (attempt if isinstance(attempt, GrpcAttempt) else None), failures

    def _backend_metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The gateway's own identity for a backend (`identity.py`): its token as it is now."""
        header = self._gateway.identity.header
        return (("authorization", header),) if header else None

    async def _grpc_attempt(self, target: str, data: bytes, timeout: float) -> tuple[str, str, bytes | GrpcAnswer]:
        call = self.channels.infer(target)
        try:
            try:
                return "ok", "", await call(data, timeout=timeout, metadata=self._backend_metadata())
            except aio.AioRpcError as exc:
                if exc.code() is not grpc.StatusCode.UNAUTHENTICATED or not await self._gateway.identity.renew():
                    raise
                # the backend refused the gateway's own token: once more with a new one
                return "ok", "", await call(data, timeout=timeout, metadata=self._backend_metadata())
        except aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code in GATEWAY_REFUSED:  # a backend checks only the gateway's own token
                return "server_error", f"refused the gateway's own credentials ({code.name})", GrpcAnswer(code, details)
            if code in CLIENT_ERRORS:
                return "client_error", "", GrpcAnswer(code, details)
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                return "timeout", f"no answer within {timeout:.2f} s", GrpcAnswer(code, details)
            if code is grpc.StatusCode.UNAVAILABLE:
                return "unreachable", f"unavailable ({details})", GrpcAnswer(code, details)
            return "server_error", f"answered {code.name} ({details})", GrpcAnswer(code, details)

    async def _rest_attempt(
        self, backend: Backend, request: pb.ModelInferRequest, timeout: float
    ) -> tuple[str, str, bytes | GrpcAnswer, Answer | None]:
        """The same tensors to the backend's REST endpoint, binary both ways, through the REST side's client;
        the last item is the backend's answer when it gave one."""
        try:
            document, binary = codec.request_document(request)
        except ProtocolError as exc:
            return "client_error", "", GrpcAnswer(grpc.StatusCode.INVALID_ARGUMENT, str(exc)), None
        document["parameters"] = {**document.get("parameters", {}), "binary_data_output": True}
        header = orjson.dumps(document)
        version = f"/versions/{request.model_version}" if request.model_version else ""
        attempt = await self._gateway._attempt(
            backend,
            "POST",
            f"/v2/models/{request.model_name}{version}/infer",
            header + (binary or b""),
            {BINARY_HEADER: str(len(header)), "content-type": "application/octet-stream"},
            timeout,
        )
        reply = attempt.response
        if reply is None:
            return attempt.outcome, attempt.reason, GrpcAnswer(grpc.StatusCode.UNAVAILABLE, attempt.reason), None
        if reply.status_code != 200:
            error = GrpcAnswer(status_of(reply.status_code), _error_text(reply.content))
            return attempt.outcome, attempt.reason, error, reply
        try:
            answer = codec.response_from_rest(reply.content, reply.headers.get(BINARY_HEADER))
        except ProtocolError as exc:
            reason = f"answered a body that is not OIP ({exc})"
            return "server_error", reason, GrpcAnswer(grpc.StatusCode.INTERNAL, ""), reply
        return "ok", "", answer.SerializeToString(), reply


def _error_text(body: bytes) -> str:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].decode("utf-8", "replace")
    return str(document.get("error", document)) if isinstance(document, Mapping) else str(document)


async def serve_grpc(
    settings: GatewaySettings, gateway: Gateway, started: Callable[[], bool]
) -> tuple[aio.Server, GatewayServicer]:
    """Start the gateway's gRPC front on GALLERY_GRPC_PORT (on the running event loop)."""
    servicer = GatewayServicer(settings, gateway, started)
    server, _ = await start_server(
        lambda server: server.add_generic_rpc_handlers((servicer.handler(),)),
        settings.bind_host,
        settings.grpc_port,
        settings.max_body_bytes,
    )
    return server, servicer


def grpc_tensors(request: pb.ModelInferRequest, answer: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The inputs of a gRPC infer request and the outputs of its (serialized) answer as JSON tensors, for the
    monitor's samples; ProtocolError when either is not OIP."""
    document, raw = codec.request_document(request)
    header = orjson.dumps(document)
    inputs = decode_infer_inputs(header + (raw or b""), len(header) if raw is not None else None)
    try:
        response = pb.ModelInferResponse.FromString(answer)
    except Exception as exc:  # protobuf's DecodeError
        raise ProtocolError(f"the answer is not a ModelInferResponse: {exc}") from None
    served, raw_out = codec.response_document(response)
    served_header = orjson.dumps(served)
    outputs = decode_infer_response(
        served_header + (raw_out or b""), len(served_header) if raw_out is not None else None
    )
    return json_tensors(inputs), json_tensors(outputs.outputs)
