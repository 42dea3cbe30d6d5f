"""Fixtures the integration tests of several modules share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_sandbox import WORKING_APP, Sandbox, make_sandbox


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    """A sandbox whose tiny service is the real app factory with the bus on; stopped after the test."""
    box = make_sandbox(tmp_path, WORKING_APP)
    yield box
    # Whatever a failing test left running must not outlive it.
    box.gallery("down")
