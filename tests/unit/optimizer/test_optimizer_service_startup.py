"""The optimizer is found by `gallery up` and starts without importing torch or ONNX Runtime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gallery_common.service import find_service
from gallery_common.settings import SettingsError, load_settings
from gallery_optimizer.settings import OptimizerSettings


def test_the_service_is_advertised_on_port_8003() -> None:
    spec = find_service("optimizer")
    assert spec is not None
    assert (spec.name, spec.port, spec.app_factory) == ("optimizer", 8003, "gallery_optimizer.app:create")


def test_building_the_app_imports_no_heavy_library(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "from gallery_common.service import find_service\n"
        "find_service('optimizer').create_app()\n"
        "print(json.dumps([m for m in ('torch', 'onnxruntime', 'onnx', 'matplotlib') if m in sys.modules]))\n"
    )
    env = {"GALLERY_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=60)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_settings_default_to_the_local_registry_and_a_folder_under_home() -> None:
    settings = OptimizerSettings(home="/srv/gallery")  # type: ignore[arg-type]
    assert settings.registry_url == "http://127.0.0.1:8001"
    assert str(settings.resolved_work_dir) == "/srv/gallery/optimizer"
    assert settings.resolved_database_url == "sqlite:////srv/gallery/optimizer.db"


def test_a_bad_registry_url_is_refused_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match="invalid setting GALLERY_REGISTRY_URL: not an http"):
        load_settings(OptimizerSettings, registry_url="registry:8001")
