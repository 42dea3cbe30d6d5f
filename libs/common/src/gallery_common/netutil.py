"""Small network helpers for launchers and tests."""

from __future__ import annotations

import itertools
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

# Ports below the ephemeral range are handed out from here up: no outgoing connection takes one of them.
LOWEST_PORT = 10000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_range_start() -> int:
    """The lowest port the kernel gives outgoing connections (Linux reads it from /proc; elsewhere the IANA
    dynamic range, which macOS and Windows use)."""
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 1024 if sys.platform.startswith("linux") else 49152


class _PortWalker:
    """Walks the ports from LOWEST_PORT to the ephemeral range from a random start, one process's own order,
    so one process never hands out the same port twice in a row and two processes rarely meet."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = -1
        self._ports: Iterator[int] = iter(())
        self._size = 0

    def next_ports(self) -> Iterator[int]:
        with self._lock:
            if self._pid != os.getpid():  # a forked child walks its own order
                self._pid = os.getpid()
                top = ephemeral_range_start()
                span = list(range(LOWEST_PORT, top))
                start = random.SystemRandom().randrange(len(span)) if span else 0  # not the seedable one
                self._ports = itertools.cycle(span[start:] + span[:start])
                self._size = len(span)
            return itertools.islice(self._ports, self._size)


_WALKER = _PortWalker()


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago, for a child process to bind.

    It lies below the kernel's ephemeral range: a port the kernel picks (`bind(port=0)`) is one it also gives
    outgoing connections, and any connection opened between picking and binding could take it ("port in
    use" in a busy process or test run). Where the ephemeral range leaves no room below it, the kernel
    picks."""
    for port in _WALKER.next_ports():
        if _bindable(host, port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> bool:
    """True once something accepts TCP connections on host:port, False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False
