"""Starting the embedded nats-server when the port it picked was taken in the meantime."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port


def test_a_port_taken_between_picking_and_binding_gets_a_fresh_one(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats", log_file=tmp_path / "nats.log")
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind((server.host, server.port))
    squatter.listen()
    taken = server.port
    try:
        server.start(timeout=15)
        assert server.port != taken
        with socket.create_connection((server.host, server.port), timeout=2) as conn:
            assert conn.recv(4).startswith(b"INFO")
    finally:
        server.stop()
        squatter.close()


def test_a_port_the_caller_chose_is_not_silently_changed(tmp_path: Path) -> None:
    host = "127.0.0.1"
    squatter = socket.socket()
    squatter.bind((host, 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    server = EmbeddedNats(tmp_path / "nats", host=host, port=taken, monitor_port=free_port(host))
    try:
        with pytest.raises(RuntimeError, match=f"{host}:{taken}"):
            server.start(timeout=5)
    finally:
        server.stop()
        squatter.close()
