"""The dynamic batcher over a real ONNX Runtime session: a request whose rows make ONNX Runtime raise
fails alone, with its reason, and a request larger than a batch is refused with the limit."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import numpy as np
import pytest
from hostile_artifacts import LOOKUP_TABLE as TABLE
from hostile_artifacts import lookup_model

from gallery_deployer.modelserver.batcher import DynamicBatcher, InferenceFailed, TooManyRows
from gallery_deployer.modelserver.model import ServedModel, served_model, session_from_bytes


class RecordingModel:
    """The real served model, recording how many rows each ONNX Runtime run got."""

    def __init__(self, model: ServedModel) -> None:
        self.model = model
        self.batchable = model.batchable
        self.runs: list[int] = []

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.runs.append(int(feeds["index"].shape[0]))
        return self.model.run(feeds)


@pytest.fixture
def lookup() -> RecordingModel:
    return RecordingModel(served_model(session_from_bytes(lookup_model()), "lookup", "1", "fp32"))


def index(*values: int) -> dict[str, np.ndarray]:
    return {"index": np.array(values, dtype=np.int64)}


async def test_one_bad_request_fails_alone_and_the_others_get_their_rows(lookup: RecordingModel) -> None:
    batcher = DynamicBatcher(lookup, max_batch_size=8, max_queue_delay=0.2, max_queue=8, eager=False)  # type: ignore[arg-type]
    batcher.start()
    requests = [batcher.submit(index(0, 1), 2), batcher.submit(index(2, 9), 2), batcher.submit(index(4), 1)]
    good_a, bad, good_b = await asyncio.wait_for(asyncio.gather(*requests, return_exceptions=True), 10)
    after = await asyncio.wait_for(batcher.submit(index(3), 1), 10)
    await asyncio.wait_for(batcher.close(), 10)

    assert lookup.runs[0] == 5, "the three requests ran as one batch first"
    assert sorted(lookup.runs[1:4]) == [1, 2, 2], "then each on its own"
    np.testing.assert_array_equal(good_a["rows"], TABLE[[0, 1]])  # type: ignore[index]
    np.testing.assert_array_equal(good_b["rows"], TABLE[[4]])  # type: ignore[index]
    assert isinstance(bad, InferenceFailed) and bad.status_code == 500
    assert bad.message.startswith("inference failed:") and "idx=9 must be within the inclusive range" in bad.message
    np.testing.assert_array_equal(after["rows"], TABLE[[3]])


async def test_a_request_larger_than_a_batch_is_refused_with_the_limit(lookup: RecordingModel) -> None:
    batcher = DynamicBatcher(lookup, max_batch_size=4, max_queue_delay=0.01, max_queue=8)  # type: ignore[arg-type]
    batcher.start()
    with pytest.raises(TooManyRows) as caught:
        await asyncio.wait_for(batcher.submit(index(0, 1, 2, 3, 4), 5), 10)
    exactly = await asyncio.wait_for(batcher.submit(index(0, 1, 2, 3), 4), 10)
    await asyncio.wait_for(batcher.close(), 10)

    assert caught.value.status_code == 400
    assert caught.value.message == (
        "the request has 5 rows and this model server runs at most 4 at once (its max_batch_size): "
        "send them in smaller requests"
    )
    assert lookup.runs == [4], "the refused request never reached ONNX Runtime"
    np.testing.assert_array_equal(exactly["rows"], TABLE[:4])
