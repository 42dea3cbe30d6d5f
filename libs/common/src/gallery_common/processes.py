"""Child processes that do not outlive the process that started them."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from functools import cache

PR_SET_PDEATHSIG = 1


@cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn making the child get SIGTERM when this process dies (Linux), so no child outlives us
    even when we are SIGKILLed.

    The signal follows the *thread* that forked the child: spawn from a thread that lives as long as the
    child does (the event loop's own, or the one that waits for it).
    """
    if not sys.platform.startswith("linux"):
        return None
    libc, parent = _libc(), os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os._exit(1)

    return preexec
