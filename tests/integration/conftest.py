"""Fixtures the integration tests of several modules share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_sandbox import WORKING_APP, Sandbox, make_sandbox

from gallery_cli.stack import stack_authorization
from gallery_common.nats_server import EmbeddedNats


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    """A sandbox whose tiny service is the real app factory with the bus on; stopped after the test."""
    box = make_sandbox(tmp_path, WORKING_APP)
    yield box
    # Whatever a failing test left running must not outlive it.
    box.gallery("down")


@pytest.fixture(scope="module")
def secured_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The GALLERY_HOME of `secured_nats`: a password file per NATS user, as `gallery up` writes them."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def secured_nats(secured_home: Path) -> Iterator[EmbeddedNats]:
    """A nats-server configured as `gallery up` configures it: one user per service, each allowed only its own
    subjects (one per test module)."""
    with EmbeddedNats(secured_home / "nats", authorization=stack_authorization(secured_home, [])) as server:
        yield server
