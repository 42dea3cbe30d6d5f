"""The model server's NATS side loads in the background, but a misconfiguration still stops the start."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from gallery_common.nats_auth import password_path
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
