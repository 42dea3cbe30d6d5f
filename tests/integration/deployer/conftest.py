"""Fixtures of the deployer's end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gallery_common.nats_server import EmbeddedNats


@pytest.fixture(scope="module")
def nats_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """One nats-server (JetStream on) for a module's stack."""
    base = tmp_path_factory.mktemp("nats")
    server = EmbeddedNats(base / "store", log_file=base / "nats.log").start()
    yield server
    server.stop()
