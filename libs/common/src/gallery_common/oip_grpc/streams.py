"""ModelStreamInfer's loop, shared by the model server and the gateway: answer each request of a stream as it
arrives, several at once so that a stream's requests batch together, and send each answer when it is ready.

Answers leave in the order they finish, as Triton's do; a client matches them by the request's `id`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

Request = TypeVar("Request")
Response = TypeVar("Response")

_END = object()


async def stream_answers(
    requests: AsyncIterator[Request],
    answer: Callable[[Request], Awaitable[Response]],
    *,
    in_flight: int,
    on_error: Callable[[Exception], Response],
) -> AsyncIterator[Response]:
    """Yield `answer(request)` for every request of `requests`, with at most `in_flight` being answered at
    once (reading the stream waits for a free slot). `answer` says why a request failed in its Response;
    an exception it raises anyway becomes `on_error(exc)`, and the stream goes on. An error reading the
    stream (the client went away) ends it after the answers already started."""
    finished: asyncio.Queue[object] = asyncio.Queue()
    slots = asyncio.Semaphore(in_flight)
    working: set[asyncio.Task[None]] = set()

    async def one(request: Request) -> None:
        try:
            finished.put_nowait(await answer(request))
        except Exception as exc:  # a bug in `answer`: the client learns the request failed, the stream goes on
            finished.put_nowait(on_error(exc))
        finally:
            slots.release()

    async def read() -> None:
        try:
            async for request in requests:
                await slots.acquire()
                task = asyncio.create_task(one(request))
                working.add(task)
                task.add_done_callback(working.discard)
            while working:
                await asyncio.wait(set(working))
        finally:
            finished.put_nowait(_END)

    reader = asyncio.create_task(read())
    try:
        while (item := await finished.get()) is not _END:
            yield item  # type: ignore[misc]
        await reader  # an error reading the stream is the call's error
    finally:
        reader.cancel()
        for task in list(working):
            task.cancel()
