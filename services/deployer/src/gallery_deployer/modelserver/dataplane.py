"""The model server's serving core: check the model, parse, batch, run, encode, observe.

Transport-agnostic, as KServe's `DataPlane` under its REST and gRPC servers: the REST app (`app.py`)
and the NATS responder (`nats_rpc.py`) hand over a body and its `Inference-Header-Content-Length` as
received, and turn the `InferAnswer`, or the GalleryError raised instead, into their own replies (an
HTTP status, a `Gallery-Status` header). Another transport is one more adapter; explanations are a path of
their own beside this one (`explaining.py`), run by separate worker processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import orjson

from gallery_common.contracts.oip import InferRequest, encode_infer_response, parse_infer_request
from gallery_common.errors import GalleryError, NotFound

from .batcher import DynamicBatcher, Overloaded, Results
from .metrics import Outcome
from .model import ServedModel

PLATFORM = "onnxruntime_onnx"


class RequestObserver(Protocol):
    """Told how each infer request ended (an `Outcome`) and how long it took (`metrics.ServingMetrics`)."""

    def request(self, outcome: str, seconds: float) -> None: ...


@dataclass(frozen=True)
class InferAnswer:
    """An encoded infer response; `header_length` is its JSON header's length when binary outputs follow."""

    body: bytes
    header_length: int | None
    rows: int  # the request's rows (its first input's batch dimension)


def served_parameters(model: ServedModel) -> dict[str, str]:
    """The metadata's `parameters`: the variant, the execution provider that runs it and, when the policy's
    first choice could not, why (`provider_fallback`)."""
    parameters = {"variant": model.variant, "execution_provider": model.execution_provider}
    if model.provider_fallback:
        parameters["provider_fallback"] = model.provider_fallback
    return parameters


def outcome_of(exc: GalleryError) -> str:
    """The serving-metrics outcome of a request that ended with `exc`."""
    if isinstance(exc, Overloaded):
        return Outcome.overloaded
    if isinstance(exc, NotFound):
        return Outcome.not_found
    return Outcome.bad_request if 400 <= exc.status_code < 500 else Outcome.error


class DataPlane:
    """Serves one model: its metadata, its readiness and its infer requests, whatever they came over."""

    def __init__(self, model: ServedModel, batcher: DynamicBatcher, observer: RequestObserver | None = None) -> None:
        self.model = model
        self._batcher = batcher
        self._observer = observer
        self.ready = False
        self._metadata = orjson.dumps(
            {
                "name": model.name,
                "versions": [model.version],
                "platform": PLATFORM,
                "inputs": [spec.metadata() for spec in model.inputs],
                "outputs": [spec.metadata() for spec in model.outputs],
                "parameters": served_parameters(model),
            }
        )

    def start(self) -> None:
        """Start batching on the running event loop; the model is ready from here on."""
        self._batcher.start()
        self.ready = True

    async def close(self) -> None:
        """Refuse new requests and answer every queued one."""
        self.ready = False
        await self._batcher.close()

    def check_model(self, name: str, version: str | None = None) -> None:
        """NotFound unless `name` (and `version`, when given) is the model served here."""
        model = self.model
        if name != model.name:
            raise NotFound(f"model {name!r} is not served here (this server serves {model.name!r})")
        if version is not None and version != model.version:
            raise NotFound(f"model {name!r} has no version {version!r} here (served: {model.version!r})")

    def metadata(self, name: str, version: str | None = None) -> bytes:
        """The model metadata document (JSON), once `check_model` has passed."""
        self.check_model(name, version)
        return self._metadata

    async def infer(
        self,
        body: bytes,
        header_length: str | None = None,
        *,
        name: str | None = None,
        version: str | None = None,
        started: float | None = None,
        request_id: str | None = None,
    ) -> InferAnswer:
        """Run one infer request body and encode its answer; raises the GalleryError it ended with.

        `name` and `version` are checked when the transport carries them (a REST path; a NATS subject
        names the model already). `started` (a `time.perf_counter()` reading) is when the request
        arrived, for the request-duration metric; now, when not given. `request_id` is the answer's `id` when
        the request names none.
        """
        started = time.perf_counter() if started is None else started
        model = self.model
        try:
            if name is not None:
                self.check_model(name, version)
            request = parse_infer_request(body, model.inputs, model.outputs, header_length)
            results = await self._batcher.submit(request.inputs, request.rows)
            payload, json_length = encode_infer_response(
                model.name, model.version, request, results, model.outputs, request_id=request_id
            )
        except GalleryError as exc:
            self._observe(outcome_of(exc), started)
            raise
        self._observe(Outcome.ok, started)
        return InferAnswer(payload, json_length, request.rows)

    async def infer_tensors(
        self, read: Callable[[ServedModel], InferRequest], *, name: str, version: str | None, started: float
    ) -> tuple[InferRequest, Results]:
        """`infer` for a transport that decodes and encodes messages itself (gRPC): `read` turns the request
        into an InferRequest against the model's signature; returns it with the outputs of its rows by name.
        Observed as `infer` is; raises the GalleryError the request ended with."""
        try:
            self.check_model(name, version)
            request = read(self.model)
            results = await self._batcher.submit(request.inputs, request.rows)
        except GalleryError as exc:
            self._observe(outcome_of(exc), started)
            raise
        self._observe(Outcome.ok, started)
        return request, results

    def _observe(self, outcome: str, started: float) -> None:
        if self._observer is not None:
            self._observer.request(outcome, time.perf_counter() - started)
