"""`free_port` hands out ports an outgoing connection can never take (below the ephemeral range), each one
bindable when handed out and none twice in a row."""

from __future__ import annotations

import socket

import pytest

from gallery_common import netutil
from gallery_common.netutil import LOWEST_PORT, ephemeral_range_start, free_port


def test_ports_lie_below_the_ephemeral_range_and_can_be_bound() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == 200, "no port is handed out twice in one lap"
    assert all(LOWEST_PORT <= port < ephemeral_range_start() for port in ports)
    for port in ports[:20]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_outgoing_connections_do_not_use_those_ports() -> None:
    """The reason for the range: the kernel's own picks (what outgoing connections get) lie above it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        assert sock.getsockname()[1] >= ephemeral_range_start()


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = {port for port in range(LOWEST_PORT, ephemeral_range_start()) if port % 2 == 0}
    monkeypatch.setattr(netutil, "_bindable", lambda host, port: port not in taken)
    assert all(free_port() % 2 == 1 for _ in range(50))


def test_with_no_room_below_the_ephemeral_range_the_kernel_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netutil, "_bindable", lambda host, port: False)
    port = free_port()
    assert port >= ephemeral_range_start()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
