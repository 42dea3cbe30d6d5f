"""Which ONNX Runtime execution provider serves a model: the first of a preference that the host's ONNX
Runtime has and that loads the model, with the CPU as the last resort.

A deployment's policy names its preference (`tensorrt`, `cuda`, `openvino`, `cpu`). A provider is
passed over when this ONNX Runtime build lacks it (`get_available_providers`), when the session cannot
be made or warmed with it (OpenVINO 1.24 refuses ONNX IR 14, a TensorRT engine may fail to build), or
when ONNX Runtime quietly registered the CPU instead (a CUDA library missing at run time). Each reason
is logged and kept, so the model server's metadata and `model.deployed` say why the model does not run
where its policy asked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from gallery_common.errors import GalleryError
from gallery_common.telemetry import get_logger

log = get_logger(__name__)

ProviderName = Literal["tensorrt", "cuda", "openvino", "cpu"]
OpenVinoDevice = Literal["CPU", "GPU", "NPU"]

# the policy's short names → ONNX Runtime's provider names
ORT_PROVIDERS: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
CPU = "CPUExecutionProvider"
# what the model server does when no preference is named: CUDA where the build has it, else the CPU
DEFAULT_PREFERENCE: tuple[ProviderName, ...] = ("cuda", "cpu")
_REASON_CHARS = 400
# ONNX Runtime puts the C++ source line and signature before its message: "/onnxruntime/.../model.cc:181
# onnxruntime::Model::Model(...) Unsupported model IR version: 14, ..."; the reason keeps the message
_ORT_SOURCE = re.compile(r"\S+\.(?:cc|cpp|h):\d+ .*?\) (?=[A-Z])")

Loaded = TypeVar("Loaded")


class NoProviderLoads(GalleryError):
    """Not even the CPU provider could load the model: the model itself is the problem."""


@dataclass(frozen=True)
class ProviderOptions:
    """Per-provider options; each provider gets only its own."""

    cuda_device_id: int = 0
    openvino_device_type: str = "CPU"
    tensorrt_fp16: bool = True
    tensorrt_engine_cache: str = ""  # a folder for built engines (a restart skips the build); "" keeps none

    def for_provider(self, provider: str) -> dict[str, str]:
        """ONNX Runtime's provider options for `provider` (its ORT name), as the strings it takes."""
        if provider == ORT_PROVIDERS["cuda"]:
            return {"device_id": str(self.cuda_device_id)}
        if provider == ORT_PROVIDERS["tensorrt"]:
            options = {"device_id": str(self.cuda_device_id), "trt_fp16_enable": "1" if self.tensorrt_fp16 else "0"}
            if self.tensorrt_engine_cache:
                options |= {"trt_engine_cache_enable": "1", "trt_engine_cache_path": self.tensorrt_engine_cache}
            return options
        if provider == ORT_PROVIDERS["openvino"]:
            return {"device_type": self.openvino_device_type}
        return {}


@dataclass(frozen=True)
class ProviderChoice(Generic[Loaded]):
    """What serves: the loaded model, its provider (ONNX Runtime's name) and why earlier preferences
    were passed over (None when the first one served)."""

    loaded: Loaded
    provider: str
    fallback: str | None


def resolve_preference(preference: Sequence[str]) -> list[str]:
    """The preference as ONNX Runtime provider names, without repeats, with the CPU last when not named."""
    unknown = [name for name in preference if name not in ORT_PROVIDERS]
    if unknown:
        raise ValueError(f"unknown execution provider {unknown[0]!r}: expected one of {', '.join(ORT_PROVIDERS)}")
    resolved = list(dict.fromkeys(ORT_PROVIDERS[name] for name in preference))
    return resolved if CPU in resolved else [*resolved, CPU]


def default_preference(available: Sequence[str]) -> list[str]:
    """The preference when none is named: CUDA where this build has it, then the CPU. A CPU-only build
    serving on the CPU is then no fallback; a CUDA build whose CUDA cannot start still says why."""
    return [name for name in DEFAULT_PREFERENCE if ORT_PROVIDERS[name] in available]


def prefers_openvino(preference: Sequence[str]) -> bool:
    """The preference names OpenVINO ahead of the plain CPU provider: a replica that gets no GPU runs out of
    an OpenVINO build of ONNX Runtime (its venv locally, its image on Kubernetes)."""
    names = list(preference)
    return "openvino" in names and ("cpu" not in names or names.index("openvino") < names.index("cpu"))


def choose_provider(
    preference: Sequence[str],
    available: Sequence[str],
    load: Callable[[str], tuple[Loaded, Sequence[str]]],
) -> ProviderChoice[Loaded]:
    """Try the preference in order; `load(provider)` makes and warms a session on it and returns it with
    the providers the session registered. Raises NoProviderLoads, with every reason, when none loads."""
    passed_over: list[str] = []
    for provider in resolve_preference(preference):
        reason: str
        if provider not in available:
            reason = f"not in this ONNX Runtime build (it has {', '.join(available)})"
        else:
            try:
                loaded, registered = load(provider)
            except Exception as exc:  # ONNX Runtime raises its own error types, one per provider
                reason = _short(f"{type(exc).__name__}: {exc}")
            else:
                if registered and registered[0] == provider:
                    fallback = "; ".join(passed_over) or None
                    if fallback:
                        log.warning("execution_provider_fallback", provider=provider, reason=fallback)
                    return ProviderChoice(loaded, provider, fallback)
                reason = f"ONNX Runtime did not register it (the session runs on {', '.join(registered) or 'nothing'})"
        log.info("execution_provider_passed_over", provider=provider, reason=reason)
        passed_over.append(f"{provider}: {reason}")
    raise NoProviderLoads(f"no execution provider could load the model: {'; '.join(passed_over)}")


def _short(text: str) -> str:
    line = _ORT_SOURCE.sub("", " ".join(text.split()))
    return line if len(line) <= _REASON_CHARS else line[: _REASON_CHARS - 1] + "…"
