"""Request ids: every inference answer names its request, so feedback can be joined to it later.

A client may send its own id in `x-gallery-request-id` (REST header or gRPC metadata); the gateway and
the model servers take it when it follows `REQUEST_ID_RULE` and refuse the request (400) when it does
not; without one they make one. An id is also a key of the gateway's outcome bucket, whose keys allow
no more than this alphabet.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from gallery_common.errors import BadRequest

REQUEST_ID_HEADER = "x-gallery-request-id"
REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"
REQUEST_ID_RULE = "1 to 128 letters, digits, '_' or '-', starting with a letter or a digit"
_ID = re.compile(REQUEST_ID_PATTERN)


class _RandomIds:
    """128-bit ids from the operating system's generator, read 64 at a time: one system call per 64 ids
    instead of one per request (the same bits `os.urandom(16)` would give, never handed out twice)."""

    __slots__ = ("_ids",)

    BATCH = 64

    def __init__(self) -> None:
        self._ids: list[str] = []

    def __call__(self) -> str:
        if not self._ids:
            pool = os.urandom(16 * self.BATCH).hex()
            self._ids = [pool[i : i + 32] for i in range(0, len(pool), 32)]
        return self._ids.pop()


_new_id = _RandomIds()
if hasattr(os, "register_at_fork"):  # a forked child must not hand out its parent's remaining ids
    os.register_at_fork(after_in_child=lambda: _new_id._ids.clear())


def new_request_id() -> str:
    """A fresh id: 128 random bits as 32 hex digits (the shape of a uuid4's hex), unguessable by other callers."""
    return _new_id()


def is_request_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


def checked_request_id(value: str) -> str:
    """`value` when it is a usable request id; BadRequest saying what one looks like otherwise."""
    if not is_request_id(value):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise BadRequest(f"{REQUEST_ID_HEADER} {shown!r} is not a request id: it must be {REQUEST_ID_RULE}")
    return value


def call_request_id(metadata: Iterable[tuple[str, str | bytes]], message_id: str) -> str:
    """The request id of a gRPC call: its `x-gallery-request-id` metadata (checked), else the message's own
    `id` when that is a usable one, else a new one."""
    for key, value in metadata:
        if key == REQUEST_ID_HEADER:
            return checked_request_id(value if isinstance(value, str) else value.decode("latin-1"))
    return message_id if is_request_id(message_id) else new_request_id()
