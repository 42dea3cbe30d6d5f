"""The trainer's unit tests keep their data in pytest's temporary folders, so those are the data roots.

A trainer reads a local `data.path` or `file://` URI only inside GALLERY_DATA_ROOTS; here that is
pytest's base temporary folder, which holds every test's `tmp_path`.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _tmp_data_roots(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("GALLERY_DATA_ROOTS", str(tmp_path_factory.getbasetemp()))
