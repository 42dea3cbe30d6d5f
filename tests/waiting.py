"""Waiting for what a test expects, instead of sleeping a fixed time: one sync and one async poller."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest


def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout: float = 60.0,
    interval: float = 0.2,
    ignore: tuple[type[BaseException], ...] = (),
) -> Any:
    """Call `check` until it returns something truthy and return that; fail naming `what` after `timeout` s.

    Exceptions of the `ignore` types count as "not yet" (a server that is still starting).
    """
    deadline = time.monotonic() + timeout
    answer: Any = None
    while True:
        try:
            answer = check()
        except ignore as exc:
            answer = exc
        else:
            if answer:
                return answer
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}; last answer {answer!r}")
        time.sleep(interval)


async def eventually(
    check: Callable[[], Any | Awaitable[Any]], timeout: float = 15.0, what: str = "", interval: float = 0.05
) -> Any:
    """`wait_for` on the event loop: `check` may be a plain or an async function."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        answer = await result if inspect.isawaitable(result) else result
        if answer:
            return answer
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what or check}")
        await asyncio.sleep(interval)
