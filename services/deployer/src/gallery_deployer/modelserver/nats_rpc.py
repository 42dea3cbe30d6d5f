"""OIP v2 inference over NATS request/reply on `infer.<model>`.

Replicas subscribe in the queue group `modelserver.<model>`, so each request reaches one of them.
A request body is the same infer JSON as `POST /v2/models/<model>/infer` (binary tensors too, with
the `Inference-Header-Content-Length` header); it goes through the same serving core as HTTP.
A failure is answered with `{"error": ...}` and a `Gallery-Status` header holding the HTTP status.
"""

from __future__ import annotations

import asyncio

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from gallery_common.contracts.names import infer_subject, subject_token
from gallery_common.contracts.oip import INFERENCE_HEADER_LENGTH
from gallery_common.errors import GalleryError
from gallery_common.telemetry import get_logger

from .dataplane import DataPlane

STATUS_HEADER = "Gallery-Status"

log = get_logger(__name__)


def queue_group(model: str) -> str:
    """The queue group a model's replicas share."""
    return f"modelserver.{subject_token(model)}"


class InferResponder:
    """Answers infer requests from NATS; each request runs in its own task so requests batch together."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane
        self._nc: Client | None = None
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, nc: Client) -> None:
        """Join the model's queue group on `nc`."""
        self._nc = nc
        model = self._plane.model.name
        self._sub = await nc.subscribe(infer_subject(model), queue=queue_group(model), cb=self._on_message)
        log.info("nats_infer_subscribed", subject=infer_subject(model), queue=queue_group(model))

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
        payload, headers = await self.infer(msg.data, (msg.headers or {}).get(INFERENCE_HEADER_LENGTH))
        if not msg.reply or self._nc is None:
            return  # a publish without a reply subject: nobody is waiting for the answer
        try:
            await self._nc.publish(msg.reply, payload, headers=headers)
        except Exception as exc:  # the connection may be closing; the requester times out either way
            log.warning("nats_reply_failed", reason=f"{type(exc).__name__}: {exc}")

    async def infer(self, body: bytes, header_length: str | None = None) -> tuple[bytes, dict[str, str]]:
        """The reply body and headers for one request body: the answer, or `{"error": ...}` with its status."""
        try:
            answer = await self._plane.infer(body, header_length)
        except GalleryError as exc:
            return orjson.dumps({"error": exc.message}), {STATUS_HEADER: str(exc.status_code)}
        headers = {STATUS_HEADER: "200"}
        if answer.header_length is not None:
            headers[INFERENCE_HEADER_LENGTH] = str(answer.header_length)
        return answer.body, headers
