"""The model server's NATS side loads in the background, after HTTP's first answer (or a short wait), but a
misconfiguration still stops the start."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from gallery_common.nats_auth import password_path
from gallery_deployer.modelserver import async_serving
from gallery_deployer.modelserver.async_serving import AsyncServing
from gallery_deployer.modelserver.settings import ModelServerSettings

# AsyncServing only keeps these until it starts in the background
NO_PLANE, NO_STORE = cast(Any, None), cast(Any, None)


def settings(home: Path) -> ModelServerSettings:
    return ModelServerSettings(
        home=home, model_name="m", model_version="1", artifact_uri="file:///m.onnx", artifact_sha256="a" * 64
    )


def test_unreadable_nats_credentials_fail_at_start_not_in_the_background(tmp_path: Path) -> None:
    password_path(tmp_path, "modelserver").mkdir(parents=True)  # a folder where the password file belongs
    with pytest.raises(IsADirectoryError):
        AsyncServing(settings(tmp_path), NO_PLANE, NO_STORE)


def test_readable_credentials_leave_the_client_to_the_background(tmp_path: Path) -> None:
    path = password_path(tmp_path, "modelserver")
    path.parent.mkdir(parents=True)
    path.write_text("secret")
    serving = AsyncServing(settings(tmp_path), NO_PLANE, NO_STORE)
    assert serving.responder is None and serving.jobs is None  # built once the server runs


class Loaded(Exception):
    """Stands for the NATS client having loaded: the test stops the side there."""


def deferred_import_recorder(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    loads: list[float] = []

    def load() -> None:
        loads.append(time.monotonic())
        raise Loaded

    monkeypatch.setattr(async_serving, "_import_deferred", load)
    return loads


def serving_with_credentials(tmp_path: Path, plane: Any) -> AsyncServing:
    path = password_path(tmp_path, "modelserver")
    path.parent.mkdir(parents=True)
    path.write_text("secret")
    return AsyncServing(settings(tmp_path), plane, NO_STORE)


async def test_the_nats_client_loads_once_http_has_answered_its_first_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(async_serving, "FIRST_ANSWER_WAIT_S", 30.0)
    loads = deferred_import_recorder(monkeypatch)
    plane = SimpleNamespace(answered=asyncio.Event())
    serving = serving_with_credentials(tmp_path, plane)
    serving.start()
    await asyncio.sleep(0.3)
    assert loads == []  # the first answer is still to come: nothing competes with it
    plane.answered.set()
    assert serving._task is not None
    with pytest.raises(Loaded):
        await serving._task
    assert len(loads) == 1


async def test_without_a_request_the_nats_client_loads_after_the_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(async_serving, "FIRST_ANSWER_WAIT_S", 0.2)
    loads = deferred_import_recorder(monkeypatch)
    serving = serving_with_credentials(tmp_path, SimpleNamespace(answered=asyncio.Event()))
    started = time.monotonic()
    serving.start()
    assert serving._task is not None
    with pytest.raises(Loaded):
        await serving._task
    assert loads and loads[0] - started >= 0.2
