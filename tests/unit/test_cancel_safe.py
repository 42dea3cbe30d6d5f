"""A task cancelled as the answer it waits for arrives must end: Python 3.11's `asyncio.wait_for` (which
nats.py waits with on every request) returns the answer instead and the task runs on, so a service's stop
that waits for its background loops hung. `gallery_common.cancel_safe.wait_for` lets the cancel through,
and the bus installs it before it opens a connection."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gallery_common import cancel_safe
from gallery_common.bus import EventBus
from gallery_common.errors import Unavailable
from gallery_common.netutil import free_port

Wait = Callable[[Awaitable[Any], float | None], Awaitable[Any]]


async def _runs_on_after_cancel(wait: Wait, *, via_queue: bool) -> bool:
    """Cancel a task in the same turn as its answer arrives (a future, or a queue as nats.py's `next_msg`
    reads); True when the task went on as if never cancelled."""
    answers: asyncio.Queue[str] = asyncio.Queue()
    answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def call() -> str:
        return await wait(answers.get() if via_queue else answer, 10)

    task = asyncio.create_task(call())
    await asyncio.sleep(0)  # the task now waits for its answer
    if via_queue:
        answers.put_nowait("reply")
    else:
        answer.set_result("reply")
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return False
    return True


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="Python 3.12's asyncio.wait_for keeps the cancel")
@pytest.mark.parametrize("via_queue", [False, True], ids=["future", "queue"])
async def test_the_stdlib_wait_for_of_python_3_11_loses_a_cancel_that_arrives_with_the_answer(via_queue: bool) -> None:
    assert await _runs_on_after_cancel(cancel_safe.stdlib_wait_for, via_queue=via_queue)


@pytest.mark.parametrize("via_queue", [False, True], ids=["future", "queue"])
async def test_the_cancel_safe_wait_for_ends_a_task_cancelled_as_its_answer_arrives(via_queue: bool) -> None:
    assert not await _runs_on_after_cancel(cancel_safe.wait_for, via_queue=via_queue)


async def test_a_stopped_polling_loop_ends_even_when_stopped_as_an_answer_arrives() -> None:
    """The shape of every background loop that calls NATS: wait for an answer, sleep, again."""
    answers: asyncio.Queue[int] = asyncio.Queue()
    seen: list[int] = []

    async def poll() -> None:
        while True:
            seen.append(await cancel_safe.wait_for(answers.get(), 10))
            await asyncio.sleep(3600)

    loop_task = asyncio.create_task(poll())
    await asyncio.sleep(0)
    answers.put_nowait(1)
    loop_task.cancel()
    async with asyncio.timeout(5):  # the stdlib's wait_for leaves it asleep for an hour
        await asyncio.gather(loop_task, return_exceptions=True)
    assert loop_task.cancelled()
    assert seen == []
    assert answers.qsize() == 1  # the answer it did not take is still there for the next reader


async def test_the_answer_and_the_timeout_are_what_the_stdlib_gives() -> None:
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    ready.set_result("reply")
    assert await cancel_safe.wait_for(ready, 1) == "reply"
    assert await cancel_safe.wait_for(asyncio.sleep(0, "now"), None) == "now"
    with pytest.raises(TimeoutError):
        await cancel_safe.wait_for(asyncio.sleep(10), 0.01)
    with pytest.raises(TimeoutError):
        await cancel_safe.wait_for(asyncio.sleep(10), 0)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="nothing to install on Python 3.12")
async def test_the_bus_installs_it_before_it_dials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncio, "wait_for", cancel_safe.stdlib_wait_for)
    monkeypatch.setattr(asyncio.tasks, "wait_for", cancel_safe.stdlib_wait_for)
    bus = EventBus(f"nats://127.0.0.1:{free_port()}", "cancel-safe-test", publish_deadline=0.2)
    with pytest.raises(Unavailable):  # no server there: the install happens before the dial, not after it
        await bus.connect()
    assert asyncio.wait_for is cancel_safe.wait_for
    assert asyncio.tasks.wait_for is cancel_safe.wait_for
