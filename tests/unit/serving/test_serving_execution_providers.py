"""Choosing the execution provider: the policy's order, what this ONNX Runtime has, what loads, and the
reasons reported when a preferred provider is passed over."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from hostile_artifacts import LOOKUP_TABLE, lookup_model

from gallery_common.settings import SettingsError, load_settings
from gallery_deployer.modelserver.batcher import DynamicBatcher
from gallery_deployer.modelserver.dataplane import DataPlane
from gallery_deployer.modelserver.model import load_model
from gallery_deployer.modelserver.providers import (
    CPU,
    NoProviderLoads,
    ProviderOptions,
    choose_provider,
    default_preference,
    prefers_openvino,
    resolve_preference,
)
from gallery_deployer.modelserver.settings import ModelServerSettings

ALL = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider", CPU]


class Loader:
    """A stand-in for making a session: refuses the providers in `refuse`, and lets those in `quietly_cpu`
    "load" but registers only the CPU, as ONNX Runtime does when a provider's libraries are missing."""

    def __init__(self, refuse: dict[str, str] | None = None, quietly_cpu: Sequence[str] = ()) -> None:
        self.refuse = refuse or {}
        self.quietly_cpu = set(quietly_cpu)
        self.tried: list[str] = []

    def __call__(self, provider: str) -> tuple[str, list[str]]:
        self.tried.append(provider)
        if provider in self.refuse:
            raise RuntimeError(self.refuse[provider])
        registered = [CPU] if provider in self.quietly_cpu else [provider, CPU]
        return f"session on {provider}", registered


def test_the_first_preferred_provider_that_loads_serves_with_no_fallback_reason() -> None:
    loader = Loader()
    choice = choose_provider(["openvino", "cpu"], ALL, loader)
    assert (choice.provider, choice.fallback, choice.loaded) == (
        "OpenVINOExecutionProvider",
        None,
        "session on OpenVINOExecutionProvider",
    )
    assert loader.tried == ["OpenVINOExecutionProvider"]


def test_providers_this_build_lacks_are_passed_over_with_what_it_has() -> None:
    loader = Loader()
    choice = choose_provider(["tensorrt", "cuda", "cpu"], ["AzureExecutionProvider", CPU], loader)
    assert choice.provider == CPU
    assert loader.tried == [CPU]  # nothing was tried that the build does not have
    has = "(it has AzureExecutionProvider, CPUExecutionProvider)"
    assert choice.fallback == (
        f"TensorrtExecutionProvider: not in this ONNX Runtime build {has}; "
        f"CUDAExecutionProvider: not in this ONNX Runtime build {has}"
    )


def test_a_provider_that_cannot_load_the_model_hands_over_to_the_next_with_the_reason() -> None:
    ir14 = (
        "[ONNXRuntimeError] : 1 : FAIL : /onnxruntime/onnxruntime/core/graph/model.cc:181 onnxruntime::Model::Model("
        "onnx::ModelProto&&, const onnxruntime::PathString&) "
        "Unsupported model IR version: 14, max supported IR version: 13"
    )
    loader = Loader(refuse={"OpenVINOExecutionProvider": ir14})
    choice = choose_provider(["openvino", "cuda", "cpu"], ["OpenVINOExecutionProvider", CPU], loader)
    assert choice.provider == CPU
    assert loader.tried == ["OpenVINOExecutionProvider", CPU]
    # ONNX Runtime's C++ source location is left out; its message stays
    assert choice.fallback is not None
    assert choice.fallback.startswith(
        "OpenVINOExecutionProvider: RuntimeError: [ONNXRuntimeError] : 1 : FAIL : Unsupported model IR version: 14"
    )
    assert "model.cc" not in choice.fallback
    assert "CUDAExecutionProvider: not in this ONNX Runtime build" in choice.fallback


def test_a_provider_onnx_runtime_quietly_replaced_with_the_cpu_is_not_reported_as_serving() -> None:
    loader = Loader(quietly_cpu=["CUDAExecutionProvider"])
    choice = choose_provider(["cuda", "cpu"], ALL, loader)
    assert choice.provider == CPU
    assert choice.fallback == (
        "CUDAExecutionProvider: ONNX Runtime did not register it (the session runs on CPUExecutionProvider)"
    )


def test_the_cpu_is_the_last_resort_even_when_the_preference_leaves_it_out() -> None:
    assert resolve_preference(["openvino"]) == ["OpenVINOExecutionProvider", CPU]
    assert resolve_preference(["cpu", "openvino", "cpu"]) == [CPU, "OpenVINOExecutionProvider"]
    choice = choose_provider(["cuda"], [CPU], Loader())
    assert choice.provider == CPU and choice.fallback is not None


def test_when_not_even_the_cpu_loads_the_model_every_reason_is_in_the_error() -> None:
    loader = Loader(refuse={"OpenVINOExecutionProvider": "bad graph", CPU: "bad graph too"})
    with pytest.raises(NoProviderLoads) as caught:
        choose_provider(["openvino"], ALL, loader)
    assert caught.value.message == (
        "no execution provider could load the model: OpenVINOExecutionProvider: RuntimeError: bad graph; "
        "CPUExecutionProvider: RuntimeError: bad graph too"
    )


def test_without_a_preference_cuda_serves_where_the_build_has_it_and_a_cpu_build_reports_no_fallback() -> None:
    assert default_preference(["CUDAExecutionProvider", CPU]) == ["cuda", "cpu"]
    on_cpu = choose_provider(
        default_preference(["AzureExecutionProvider", CPU]), ["AzureExecutionProvider", CPU], Loader()
    )
    assert (on_cpu.provider, on_cpu.fallback) == (CPU, None)
    # a CUDA build whose CUDA cannot start is a fallback, and says so
    broken = Loader(refuse={"CUDAExecutionProvider": "libcudnn.so.9: cannot open shared object file"})
    on_cpu = choose_provider(default_preference(ALL), ALL, broken)
    assert on_cpu.fallback == "CUDAExecutionProvider: RuntimeError: libcudnn.so.9: cannot open shared object file"


def test_an_unknown_provider_name_is_refused_with_the_names_there_are() -> None:
    with pytest.raises(ValueError, match="unknown execution provider 'rocm': expected one of tensorrt, cuda"):
        resolve_preference(["rocm"])


def test_each_provider_gets_only_its_own_options() -> None:
    options = ProviderOptions(
        cuda_device_id=1, openvino_device_type="NPU", tensorrt_fp16=True, tensorrt_engine_cache="/tmp/trt"
    )
    assert options.for_provider("CUDAExecutionProvider") == {"device_id": "1"}
    assert options.for_provider("TensorrtExecutionProvider") == {
        "device_id": "1",
        "trt_fp16_enable": "1",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": "/tmp/trt",
    }
    assert ProviderOptions(tensorrt_fp16=False).for_provider("TensorrtExecutionProvider") == {
        "device_id": "0",
        "trt_fp16_enable": "0",
    }
    assert options.for_provider("OpenVINOExecutionProvider") == {"device_type": "NPU"}
    assert options.for_provider(CPU) == {}


@pytest.mark.parametrize(
    ("preference", "expected"),
    [
        (["openvino", "cpu"], True),
        (["cuda", "openvino"], True),
        (["cpu", "openvino"], False),
        (["cuda", "cpu"], False),
        ([], False),
    ],
)
def test_openvino_is_preferred_only_ahead_of_the_cpu(preference: list[str], expected: bool) -> None:
    assert prefers_openvino(preference) is expected


MODEL = {"model_name": "m", "model_version": "1", "artifact_uri": "file:///m.onnx", "artifact_sha256": "0" * 64}


def test_the_server_reads_its_preference_from_the_environment_and_refuses_unknown_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings(ModelServerSettings, **MODEL).execution_providers == []  # CUDA where the build has it
    monkeypatch.setenv("GALLERY_EXECUTION_PROVIDERS", '["openvino", "cpu"]')
    monkeypatch.setenv("GALLERY_OPENVINO_DEVICE_TYPE", "GPU")
    settings = load_settings(ModelServerSettings, **MODEL)
    assert settings.execution_providers == ["openvino", "cpu"]
    assert settings.provider_options().for_provider("OpenVINOExecutionProvider") == {"device_type": "GPU"}
    monkeypatch.setenv("GALLERY_EXECUTION_PROVIDERS", '["rocm"]')
    with pytest.raises(SettingsError) as caught:
        load_settings(ModelServerSettings, **MODEL)
    assert str(caught.value) == (
        "invalid setting GALLERY_EXECUTION_PROVIDERS: Input should be 'tensorrt', 'cuda', 'openvino' or 'cpu'"
    )


def test_a_model_loaded_here_asking_for_cuda_serves_on_the_cpu_and_its_metadata_says_why(tmp_path: Path) -> None:
    data = lookup_model()
    path = tmp_path / "artifacts" / "lookup.onnx"
    path.parent.mkdir()
    path.write_bytes(data)
    settings = load_settings(
        ModelServerSettings,
        home=tmp_path,
        model_name="lookup",
        model_version="1",
        artifact_uri=path.as_uri(),
        artifact_sha256=hashlib.sha256(data).hexdigest(),
        execution_providers=["tensorrt", "cuda", "cpu"],
    )
    assert "CUDAExecutionProvider" not in ort.get_available_providers()  # .venv's onnxruntime is the CPU build

    model = load_model(settings)

    assert model.execution_provider == CPU and model.session.get_providers() == [CPU]
    document = orjson.loads(DataPlane(model, DynamicBatcher(model, 4, 0.001, 8)).metadata("lookup"))
    parameters = document["parameters"]
    assert parameters["execution_provider"] == CPU and parameters["variant"] == "fp32"
    assert parameters["provider_fallback"].startswith("TensorrtExecutionProvider: not in this ONNX Runtime build")
    assert "CUDAExecutionProvider: not in this ONNX Runtime build" in parameters["provider_fallback"]
    rows = model.run({"index": np.array([4, 0], np.int64)})["rows"]
    np.testing.assert_array_equal(rows, LOOKUP_TABLE[[4, 0]])
