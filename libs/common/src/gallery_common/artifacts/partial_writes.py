"""Temp files of atomic writes, named after the process writing them, and swept once that process is gone.

A write goes to a temp file beside its destination and is renamed over it when whole. A writer killed
mid-write (SIGKILL, OOM, a lost node) runs no cleanup, and its temp file would stay in the artifact's
folder for ever. The name carries the writer's host and pid, so the next write into that folder (the
retried job, typically) removes the temp files of writers on this host that no longer run. A writer on
another host (a shared volume) is never judged from here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
from functools import cache
from pathlib import Path

TEMP_PREFIX = ".gallery-tmp-"
_OURS = re.compile(re.escape(TEMP_PREFIX) + r"(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-[0-9a-f]+$")


@cache
def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_name() -> str:
    """A fresh temp file name for this process's write."""
    return f"{TEMP_PREFIX}{_host()}-{os.getpid()}-{secrets.token_hex(8)}"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def sweep_dead_writers(folder: Path) -> list[str]:
    """Remove the temp files in `folder` whose writer ran on this host and has ended; returns their names."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:  # no folder yet: nothing was left in it
        return removed
    for entry in entries:
        match = _OURS.match(entry.name)
        if match is None or match["host"] != _host() or _running(int(match["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):  # another writer swept it first
            os.unlink(entry.path)
            removed.append(entry.name)
    return removed
