"""OIP v2 inference over NATS request/reply on `infer.<model>`.

Replicas subscribe in the queue group `modelserver.<model>`, so each request reaches one of them.
A request body is the same infer JSON as `POST /v2/models/<model>/infer` (binary tensors too, with
the `Inference-Header-Content-Length` header); it goes through the same parser and batcher as HTTP.
A failure is answered with `{"error": ...}` and a `Gallery-Status` header holding the HTTP status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from gallery_common.errors import GalleryError
from gallery_common.telemetry import get_logger

from .batcher import DynamicBatcher
from .model import ServedModel
from .protocol import InferRequestError, encode_infer_response, parse_infer_request

STATUS_HEADER = "Gallery-Status"
INFERENCE_HEADER_LENGTH = "Inference-Header-Content-Length"

Observer = Callable[[GalleryError | None, float], None]
"""Told how each request ended (None when it succeeded) and how long it took."""

log = get_logger(__name__)


def infer_subject(model: str) -> str:
    """The request/reply subject of a model."""
    return f"infer.{model}"


def queue_group(model: str) -> str:
    """The queue group a model's replicas share."""
    return f"modelserver.{model}"


class InferResponder:
    """Answers infer requests from NATS; each request runs in its own task so requests batch together."""

    def __init__(self, model: ServedModel, batcher: DynamicBatcher, observe: Observer | None = None) -> None:
        self._model = model
        self._batcher = batcher
        self._observe = observe
        self._nc: Client | None = None
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, nc: Client) -> None:
        """Join the model's queue group on `nc`."""
        self._nc = nc
        subject = infer_subject(self._model.name)
        self._sub = await nc.subscribe(subject, queue=queue_group(self._model.name), cb=self._on_message)
        log.info("nats_infer_subscribed", subject=subject, queue=queue_group(self._model.name))

    async def close(self) -> None:
        """Stop taking requests and answer the ones already taken."""
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_message(self, msg: Msg) -> None:
        # nats.py awaits this callback before delivering the next message; a task lets requests overlap.
        task = asyncio.get_running_loop().create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        started = time.perf_counter()
        payload, headers, error = await self.infer(msg.data, (msg.headers or {}).get(INFERENCE_HEADER_LENGTH))
        if self._observe is not None:
            self._observe(error, time.perf_counter() - started)
        if not msg.reply or self._nc is None:
            return  # a publish without a reply subject: nobody is waiting for the answer
        try:
            await self._nc.publish(msg.reply, payload, headers=headers)
        except Exception as exc:  # the connection may be closing; the requester times out either way
            log.warning("nats_reply_failed", reason=f"{type(exc).__name__}: {exc}")

    async def infer(
        self, body: bytes, header_length: str | None = None
    ) -> tuple[bytes, dict[str, str], GalleryError | None]:
        """The reply body and headers for one request body, and the error it ended with, if any."""
        model = self._model
        try:
            length = _parse_length(header_length)
            parsed = parse_infer_request(body, model.inputs, model.outputs, length)
            results = await self._batcher.submit(parsed.inputs, parsed.rows)
            payload, binary_length = encode_infer_response(model.name, model.version, parsed, results, model.outputs)
        except GalleryError as exc:
            return orjson.dumps({"error": exc.message}), {STATUS_HEADER: str(exc.status_code)}, exc
        headers = {STATUS_HEADER: "200"}
        if binary_length is not None:
            headers[INFERENCE_HEADER_LENGTH] = str(binary_length)
        return payload, headers, None


def _parse_length(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InferRequestError(f"{INFERENCE_HEADER_LENGTH} must be an integer, got {value!r}") from None
