"""The dynamic batcher groups concurrent requests, splits results back, bounds its queue and drains on close."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping

import numpy as np
import pytest

from gallery_common.errors import Unavailable
from gallery_deployer.modelserver.batcher import DynamicBatcher, InferenceFailed, Overloaded


class DoublingModel:
    """Doubles `x`; records the batch sizes it was called with. Stands in for a ServedModel."""

    batchable = True

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.fail = fail
        self.release = threading.Event()
        self.release.set()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.release.wait(5)
        if self.fail:
            raise RuntimeError("bad input tensor\nmore detail")
        self.batches.append(int(feeds["x"].shape[0]))
        return {"y": feeds["x"] * 2}


class Observer:
    def __init__(self) -> None:
        self.rows: list[int] = []
        self.waits: list[float] = []

    def queued(self, seconds: float) -> None:
        self.waits.append(seconds)

    def computed(self, seconds: float, rows: int) -> None:
        self.rows.append(rows)


def request(value: float, rows: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, 2), value, np.float32)}


async def test_concurrent_requests_run_as_one_batch_and_each_gets_its_own_rows() -> None:
    model, observer = DoublingModel(), Observer()
    batcher = DynamicBatcher(model, max_batch_size=8, max_queue_delay=0.05, max_queue=16, observer=observer)  # type: ignore[arg-type]
    batcher.start()

    results = await asyncio.gather(*(batcher.submit(request(i, rows=1 + i % 2), 1 + i % 2) for i in range(4)))
    await batcher.close()

    assert model.batches == [6]
    assert observer.rows == [6]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], np.full((1 + i % 2, 2), 2 * i, np.float32))


async def test_a_full_batch_closes_early_and_the_rest_go_to_the_next() -> None:
    model = DoublingModel()
    batcher = DynamicBatcher(model, max_batch_size=2, max_queue_delay=10, max_queue=16)  # type: ignore[arg-type]
    batcher.start()

    # a 10 s queue delay: only full batches can finish within the second allowed
    await asyncio.wait_for(asyncio.gather(*(batcher.submit(request(i), 1) for i in range(4))), 1)
    await batcher.close()

    assert model.batches == [2, 2]


async def test_requests_with_other_trailing_shapes_run_in_separate_groups() -> None:
    model = DoublingModel()
    batcher = DynamicBatcher(model, max_batch_size=8, max_queue_delay=0.05, max_queue=16)  # type: ignore[arg-type]
    batcher.start()
    wide = {"x": np.ones((1, 3), np.float32)}

    narrow_result, wide_result = await asyncio.gather(batcher.submit(request(1), 1), batcher.submit(wide, 1))
    await batcher.close()

    assert sorted(model.batches) == [1, 1]
    assert wide_result["y"].shape == (1, 3)
    assert narrow_result["y"].shape == (1, 2)


async def test_a_full_queue_answers_overloaded_with_retry_after() -> None:
    model = DoublingModel()
    model.release.clear()
    batcher = DynamicBatcher(model, max_batch_size=1, max_queue_delay=0, max_queue=2)  # type: ignore[arg-type]
    batcher.start()
    running = asyncio.ensure_future(batcher.submit(request(0), 1))
    await asyncio.sleep(0.05)  # the first one is now running and no longer waits
    waiting = [asyncio.ensure_future(batcher.submit(request(i), 1)) for i in (1, 2)]
    await asyncio.sleep(0)

    with pytest.raises(Overloaded) as caught:
        await batcher.submit(request(3), 1)
    assert caught.value.retry_after >= 1
    assert caught.value.status_code == 503

    model.release.set()
    await asyncio.gather(running, *waiting)
    assert (await batcher.submit(request(4), 1))["y"][0, 0] == 8
    await batcher.close()


async def test_close_finishes_queued_work_then_refuses() -> None:
    model = DoublingModel()
    batcher = DynamicBatcher(model, max_batch_size=4, max_queue_delay=5, max_queue=8)  # type: ignore[arg-type]
    batcher.start()
    pending = [asyncio.ensure_future(batcher.submit(request(i), 1)) for i in range(3)]
    await asyncio.sleep(0.01)

    await asyncio.wait_for(batcher.close(), 2)

    assert [p.result()["y"][0, 0] for p in pending] == [0, 2, 4]
    with pytest.raises(Unavailable, match="shutting down"):
        await batcher.submit(request(9), 1)


async def test_a_failing_batch_fails_each_of_its_requests_and_the_batcher_goes_on() -> None:
    model = DoublingModel(fail=True)
    batcher = DynamicBatcher(model, max_batch_size=4, max_queue_delay=0.01, max_queue=8)  # type: ignore[arg-type]
    batcher.start()

    outcomes = await asyncio.gather(*(batcher.submit(request(i), 1) for i in range(2)), return_exceptions=True)
    model.fail = False
    after = await batcher.submit(request(3), 1)
    await batcher.close()

    assert all(isinstance(o, InferenceFailed) and "bad input tensor" in o.message for o in outcomes)
    assert after["y"][0, 0] == 6


async def test_an_eager_batcher_runs_a_lone_request_without_waiting_the_queue_delay() -> None:
    model = DoublingModel()
    eager = DynamicBatcher(model, max_batch_size=8, max_queue_delay=30, max_queue=8)  # type: ignore[arg-type]
    eager.start()
    # a 30 s delay: only an eager batcher can answer within the second allowed
    assert (await asyncio.wait_for(eager.submit(request(2), 1), 1))["y"][0, 0] == 4
    await eager.close()

    patient = DynamicBatcher(model, max_batch_size=8, max_queue_delay=0.3, max_queue=8, eager=False)  # type: ignore[arg-type]
    patient.start()
    started = asyncio.get_running_loop().time()
    await patient.submit(request(2), 1)
    assert asyncio.get_running_loop().time() - started >= 0.25
    await patient.close()


async def test_requests_arriving_while_a_lone_one_runs_form_the_next_batch() -> None:
    model, observer = DoublingModel(), Observer()
    model.release.clear()
    batcher = DynamicBatcher(model, max_batch_size=8, max_queue_delay=0.05, max_queue=16, observer=observer)  # type: ignore[arg-type]
    batcher.start()
    lone = asyncio.ensure_future(batcher.submit(request(1), 1))
    await asyncio.sleep(0.05)  # it runs on its own, held by the model
    later = [asyncio.ensure_future(batcher.submit(request(i), 1)) for i in (2, 3, 4)]
    await asyncio.sleep(0)
    assert batcher.waiting == 3

    model.release.set()
    results = await asyncio.wait_for(asyncio.gather(lone, *later), 2)
    await batcher.close()

    assert model.batches == [1, 3]
    assert observer.rows == [1, 3] and len(observer.waits) == 4
    assert [r["y"][0, 0] for r in results] == [2, 4, 6, 8]
