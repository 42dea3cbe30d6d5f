"""The model server's serving core: one path from body to answer for every transport, observed once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import orjson
import pytest

from gallery_common.contracts.oip import InferRequestError, TensorSpec, decode_infer_response, encode_infer_request
from gallery_common.errors import NotFound
from gallery_deployer.modelserver.batcher import DynamicBatcher, TooManyRows
from gallery_deployer.modelserver.dataplane import DataPlane
from gallery_deployer.modelserver.metrics import Outcome
from gallery_deployer.modelserver.nats_rpc import STATUS_HEADER, InferResponder


@dataclass
class DoublingModel:
    """y = 2x over FP32 [-1, 2]. Stands in for a ServedModel."""

    name: str = "doubler"
    version: str = "3"
    variant: str = "fp32"
    inputs: tuple[TensorSpec, ...] = (TensorSpec("x", "FP32", (-1, 2)),)
    outputs: tuple[TensorSpec, ...] = (TensorSpec("y", "FP32", (-1, 2)),)
    batchable: bool = True
    execution_provider: str = "CPUExecutionProvider"
    provider_fallback: str | None = None

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": feeds["x"] * 2}


@dataclass
class Outcomes:
    seen: list[str] = field(default_factory=list)

    def request(self, outcome: str, seconds: float) -> None:
        assert seconds >= 0
        self.seen.append(outcome)


@pytest.fixture
async def plane() -> AsyncIterator[tuple[DataPlane, Outcomes]]:
    model, outcomes = DoublingModel(), Outcomes()
    batcher = DynamicBatcher(model, max_batch_size=4, max_queue_delay=0.001, max_queue=8)  # type: ignore[arg-type]
    serving = DataPlane(model, batcher, outcomes)  # type: ignore[arg-type]
    serving.start()
    yield serving, outcomes
    await serving.close()


X = np.array([[1, 2], [3, 4]], np.float32)


@pytest.mark.parametrize("binary", [False, True])
async def test_a_body_is_answered_and_observed_as_ok(plane: tuple[DataPlane, Outcomes], binary: bool) -> None:
    serving, outcomes = plane
    body, header_length = encode_infer_request({"x": X}, binary=binary, binary_outputs=binary)

    answer = await serving.infer(body, None if header_length is None else str(header_length), name="doubler")

    assert (answer.header_length is not None) is binary
    np.testing.assert_array_equal(decode_infer_response(answer.body, answer.header_length).outputs["y"], X * 2)
    assert outcomes.seen == [Outcome.ok]


async def test_refusals_keep_their_status_and_are_observed_by_outcome(plane: tuple[DataPlane, Outcomes]) -> None:
    serving, outcomes = plane
    body, _ = encode_infer_request({"x": X})
    with pytest.raises(NotFound, match="has no version '9'"):
        await serving.infer(body, name="doubler", version="9")
    with pytest.raises(NotFound, match="'other' is not served here"):
        serving.metadata("other")
    with pytest.raises(InferRequestError, match="must be an integer, got 'ten'") as bad_header:
        await serving.infer(body, "ten")
    assert bad_header.value.status_code == 400
    with pytest.raises(TooManyRows):
        await serving.infer(encode_infer_request({"x": np.zeros((5, 2), np.float32)})[0])
    assert outcomes.seen == [Outcome.not_found, Outcome.bad_request, Outcome.bad_request]


async def test_nats_answers_through_the_same_core_with_the_http_status(plane: tuple[DataPlane, Outcomes]) -> None:
    serving, outcomes = plane
    responder = InferResponder(serving)
    body, header_length = encode_infer_request({"x": X}, binary=True)

    payload, headers = await responder.infer(body, str(header_length))
    assert headers == {STATUS_HEADER: "200"}
    np.testing.assert_array_equal(decode_infer_response(payload).outputs["y"], X * 2)

    payload, headers = await responder.infer(body, "-3")
    assert headers == {STATUS_HEADER: "400"}
    assert "Inference-Header-Content-Length -3 is outside the body" in orjson.loads(payload)["error"]
    assert outcomes.seen == [Outcome.ok, Outcome.bad_request]


def test_the_metadata_describes_the_signature() -> None:
    model = DoublingModel()
    serving = DataPlane(model, DynamicBatcher(model, 4, 0.001, 8))  # type: ignore[arg-type]
    document = orjson.loads(serving.metadata("doubler", "3"))
    assert document["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]
    # the CPU provider served the model at the policy's first choice: no fallback reason
    assert document["parameters"] == {"variant": "fp32", "execution_provider": "CPUExecutionProvider"}
