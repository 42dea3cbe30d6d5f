"""The model server's ONNX Runtime session: intra-op threads do not spin between requests unless asked.

Spinning threads keep a core busy while they wait for the next run: on a 2-core machine that was ~250 µs
of CPU per small request, half of what the whole request cost without it (bench/serve.py).
"""

from __future__ import annotations

import pytest
from hostile_artifacts import lookup_model

from gallery_common.settings import load_settings
from gallery_deployer.modelserver.model import SPINNING_CONFIG, session_from_bytes
from gallery_deployer.modelserver.settings import ModelServerSettings


def test_intra_op_threads_spin_only_when_the_setting_asks() -> None:
    quiet = session_from_bytes(lookup_model())
    spinning = session_from_bytes(lookup_model(), spinning=True)

    assert quiet.get_session_options().get_session_config_entry(SPINNING_CONFIG) == "0"
    assert spinning.get_session_options().get_session_config_entry(SPINNING_CONFIG) == "1"


MODEL = {"model_name": "m", "model_version": "1", "artifact_uri": "file:///m.onnx", "artifact_sha256": "0" * 64}


def test_the_spinning_setting_is_off_by_default_and_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(ModelServerSettings, **MODEL).intra_op_spinning is False
    monkeypatch.setenv("GALLERY_INTRA_OP_SPINNING", "true")
    assert load_settings(ModelServerSettings, **MODEL).intra_op_spinning is True
