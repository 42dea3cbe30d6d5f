"""`asyncio.wait_for` that never loses a cancel, in place of Python 3.11's.

On 3.11, `asyncio.wait_for` returns the awaited result when its task is cancelled as that result arrives:
the cancel is gone, and the task runs on. nats.py waits with it on every request, JetStream publish
acknowledgement, pull fetch and flush, so a background loop that calls NATS and is stopped at that moment
never ends, and whatever awaits its end waits for ever (a fresh-clone `make test` hung so in
`WorkQueue._stop`). Python 3.12 rewrote `wait_for` on `asyncio.timeout` (gh-96764), which lets the cancel
through; `install` puts that version in place on 3.11. The bus installs it before it opens a connection.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

stdlib_wait_for = asyncio.wait_for


async def wait_for(awaitable: Awaitable[T], timeout: float | None) -> T:
    """Python 3.12's `asyncio.wait_for`: `awaitable`'s result, TimeoutError past `timeout` s, and a cancel of
    the calling task always raised, even when it arrives with the result."""
    if timeout is not None and timeout <= 0:
        # nothing is awaited here before the answer: the stdlib's path (cancel at once, then read) loses nothing
        return await stdlib_wait_for(awaitable, timeout)
    async with asyncio.timeout(timeout):
        return await awaitable


def install() -> None:
    """Make `asyncio.wait_for` the cancel-safe one for this process (Python 3.11; 3.12's is already)."""
    if sys.version_info < (3, 12) and asyncio.wait_for is not wait_for:
        asyncio.wait_for = wait_for  # type: ignore[assignment]  # the module attribute nats.py looks up per call
        asyncio.tasks.wait_for = wait_for  # type: ignore[assignment]
