"""The execution targets a host offers: each a hardware class and an ONNX Runtime execution provider.

A measurement is a property of the hardware and the provider it came from (INT8 is barely faster than
FP32 on an AVX2 CPU and 3.5x on a VNNI one; OpenVINO's provider and the CPU provider differ again), so the
optimizer measures every variant on every target present and the deployer serves, on a node, what was
best on that node's target.

- The CPU provider is always present.
- OpenVINO's build of ONNX Runtime replaces the `onnxruntime` module, so it lives in an interpreter of its
  own (GALLERY_OPENVINO_PYTHON, by default `.venv-openvino/bin/python` beside this interpreter's venv) and
  is present when its provider loads there.
- CUDA and TensorRT are present when this interpreter's onnxruntime has them and `nvidia-smi` names a GPU;
  they run on the GPU's class (`gpu-nvidia-<model>`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from gallery_common.hardware import gpu_class, host_cpu

EXECUTION_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
GPU_PROVIDERS = ("tensorrt", "cuda")
_PROVIDERS_PROBE = "import onnxruntime, json; print(json.dumps(onnxruntime.get_available_providers()))"


@dataclass(frozen=True)
class Target:
    """One place a model can run: a hardware class, a provider (`cpu`, `openvino`, `cuda`, `tensorrt`) and
    the interpreter whose onnxruntime has that provider."""

    hardware_class: str
    provider: str
    python: str

    @property
    def key(self) -> str:
        """`<hardware class>/<provider>`, e.g. `cpu-x86-avx2/openvino`: what recommendations are keyed by."""
        return f"{self.hardware_class}/{self.provider}"

    @property
    def execution_provider(self) -> str:
        """ONNX Runtime's name of the provider, e.g. `OpenVINOExecutionProvider`."""
        return EXECUTION_PROVIDERS[self.provider]


@dataclass(frozen=True)
class Targets:
    """The targets present (CPU first) and, for each provider that is not, why."""

    present: tuple[Target, ...]
    absent: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        """JSON-ready: the present targets' keys and the absent providers' reasons."""
        return {"present": [t.key for t in self.present], "absent": dict(self.absent)}


def default_openvino_python() -> Path:
    """GALLERY_OPENVINO_PYTHON, else `.venv-openvino/bin/python` in the folder holding this interpreter's venv."""
    configured = os.environ.get("GALLERY_OPENVINO_PYTHON")
    if configured:
        return Path(configured)
    return Path(sys.prefix).parent / ".venv-openvino" / "bin" / "python"


def interpreter_providers(python: Path, timeout_s: float = 60.0) -> list[str]:
    """The execution providers the onnxruntime of interpreter `python` offers (blocking; a subprocess).

    RuntimeError says why there are none to be had: no such interpreter, no onnxruntime in it.
    """
    if not python.exists():
        raise RuntimeError(f"no interpreter at {python}")
    try:
        done = subprocess.run(
            [str(python), "-c", _PROVIDERS_PROBE], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{python} could not be asked for its providers: {exc}") from None
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{python} has no usable onnxruntime: {tail}")
    return [str(p) for p in json.loads(done.stdout.strip().splitlines()[-1])]


def _this_interpreters_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def nvidia_smi_names() -> str:
    """`nvidia-smi --query-gpu=name`'s output, one GPU a line (blocking; OSError without nvidia-smi)."""
    return subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout


def detect_targets(
    *,
    cpu_class: str | None = None,
    openvino_python: Path | None = None,
    openvino_providers: Callable[[Path], list[str]] = interpreter_providers,
    local_providers: Callable[[], list[str]] = _this_interpreters_providers,
    gpu_names: Callable[[], str] = nvidia_smi_names,
) -> Targets:
    """The targets this host offers (blocking: it asks the OpenVINO interpreter and `nvidia-smi`).

    The arguments after `cpu_class` (default: this host's) exist so tests can describe other hosts.
    """
    cpu = cpu_class or host_cpu().hardware_class
    present = [Target(cpu, "cpu", sys.executable)]
    absent: dict[str, str] = {}

    python = openvino_python or default_openvino_python()
    try:
        if EXECUTION_PROVIDERS["openvino"] in openvino_providers(python):
            present.append(Target(cpu, "openvino", str(python)))
        else:
            absent["openvino"] = f"the onnxruntime of {python} has no OpenVINOExecutionProvider"
    except RuntimeError as exc:
        absent["openvino"] = str(exc)

    try:
        names = [line.strip() for line in gpu_names().splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        names = []
    local = set(local_providers())
    for provider in GPU_PROVIDERS:
        if not names:
            absent[provider] = "no GPU"
        elif EXECUTION_PROVIDERS[provider] not in local:
            absent[provider] = f"this interpreter's onnxruntime has no {EXECUTION_PROVIDERS[provider]}"
        else:
            present.append(Target(gpu_class(names[0]), provider, sys.executable))
    return Targets(tuple(present), absent)


@cache
def host_targets() -> Targets:
    """`detect_targets()` for this host, asked once per process."""
    return detect_targets()
