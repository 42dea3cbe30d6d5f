"""What the model server's and the gateway's gRPC fronts share: the server, the token check, and
GalleryErrors as gRPC status codes (the HTTP status each error carries, mapped once here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

import grpc
from grpc import aio

from gallery_common.auth import Caller, check_role, identify
from gallery_common.errors import GalleryError
from gallery_common.settings import GallerySettings, Role

from . import grpc_predict_v2_pb2_grpc as pb_grpc

STATUS_OF_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_of(http_status: int) -> grpc.StatusCode:
    """The gRPC status code of an HTTP status (an error's `status_code`, or a REST backend's answer)."""
    return STATUS_OF_HTTP.get(http_status, grpc.StatusCode.INTERNAL)


async def abort(context: aio.ServicerContext, exc: GalleryError) -> NoReturn:
    """End the call with the error's status code and its message as the details."""
    await context.abort(status_of(exc.status_code), exc.message)
    raise AssertionError("context.abort returned")  # it raises; this line tells type checkers so


def authorize(settings: GallerySettings, context: aio.ServicerContext, role: Role = Role.inference) -> Caller:
    """The caller; Unauthorized or Forbidden unless the call's `authorization` metadata holds a bearer token
    with `role`."""
    authorization = None
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            authorization = value if isinstance(value, str) else value.decode("latin-1")
            break
    caller = identify(settings, authorization)
    check_role(caller, role)
    return caller


def servicer_registration(servicer: pb_grpc.GRPCInferenceServiceServicer) -> Callable[[aio.Server], None]:
    """What adds a generated-style servicer to a server, for `start_server`."""
    return lambda server: pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)


async def start_server(
    register: Callable[[aio.Server], None], host: str, port: int, max_message_bytes: int
) -> tuple[aio.Server, int]:
    """Serve what `register` adds on `host:port` (0: a free port) on the running event loop; returns the
    server and its port.

    A request message over `max_message_bytes` is refused by gRPC itself with RESOURCE_EXHAUSTED before
    the servicer sees it (GALLERY_MAX_BODY_BYTES, as on the REST side); answers are not limited.
    """
    server = aio.server(
        options=[("grpc.max_receive_message_length", max_message_bytes), ("grpc.max_send_message_length", -1)]
    )
    register(server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    await server.start()
    return server, bound
