"""The machine a measurement was taken on: CPU model, architecture and the instruction sets that change
what quantized kernels compute and how fast.

ONNX Runtime's integer GEMM on x86 uses VNNI (`vpdpbusd`, AVX-512 VNNI or AVX-VNNI) or AMX where the CPU
has them; without them it multiplies u8 x s8 pairs with `vpmaddubsw`, whose 16-bit sums saturate when
weights use the full 8-bit range. So an INT8 model's accuracy, not only its speed, depends on the CPU.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# flags that decide which integer dot-product kernel runs (x86 from /proc/cpuinfo, Arm's `asimddp`)
_INT8_DOT_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni", "asimddp")
_REPORTED_FLAGS = ("avx2", "avx512f", "avx512bw", *_INT8_DOT_FLAGS, "f16c", "fma")


@dataclass(frozen=True)
class CpuInfo:
    """What a CPU is and which of the instruction sets that matter here it has."""

    model: str
    arch: str
    cores: int
    flags: frozenset[str]

    @property
    def int8_dot_product(self) -> str | None:
        """The INT8 dot-product extension ONNX Runtime can use ('amx_int8', 'avx512_vnni', ...), or None."""
        return next((flag for flag in _INT8_DOT_FLAGS if flag in self.flags), None)

    @property
    def hardware_class(self) -> str:
        """The class of CPUs a measurement stands for: `cpu-<arch>[-<extension>]`, named by the instruction
        set that decides INT8 and FP32 kernel speed, e.g. `cpu-x86-avx512-vnni`, `cpu-x86-avx2`, `cpu-arm64`."""
        return cpu_class(self.arch, self.flags)

    def describe(self) -> dict[str, object]:
        """JSON-ready: model, arch, cores, the class and the flags that matter."""
        return {
            "model": self.model,
            "arch": self.arch,
            "cores": self.cores,
            "hardware_class": self.hardware_class,
            "flags": sorted(self.flags),
        }


# the most capable extension first: a CPU is named by the first it has
_CLASS_EXTENSIONS = (
    ("amx_int8", "amx"),
    ("avx512_vnni", "avx512-vnni"),
    ("avx_vnni", "avx-vnni"),
    ("asimddp", "dotprod"),
    ("avx512bw", "avx512"),
    ("avx2", "avx2"),
)
_ARCH_NAMES = {"x86_64": "x86", "amd64": "x86", "aarch64": "arm64", "arm64": "arm64"}


def cpu_class(arch: str, flags: frozenset[str]) -> str:
    """`cpu-<arch>[-<extension>]` for an architecture (`x86_64`, `amd64`, `aarch64`, ...) and cpuinfo flags."""
    name = f"cpu-{_ARCH_NAMES.get(arch.lower(), arch.lower())}"
    extension = next((label for flag, label in _CLASS_EXTENSIONS if flag in flags), None)
    return f"{name}-{extension}" if extension else name


def gpu_class(product: str) -> str:
    """`gpu-nvidia-<model>` from a GPU's name as `nvidia-smi --query-gpu=name` gives it ("NVIDIA H100 80GB
    HBM3") or as GPU feature discovery labels it (`nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3`): both give
    `gpu-nvidia-h100-80gb-hbm3`."""
    words = re.sub(r"[^a-z0-9]+", "-", product.lower()).strip("-")
    words = words.removeprefix("nvidia-").removeprefix("nvidia")
    if not words:
        raise ValueError(f"GPU product name {product!r} names no model")
    return f"gpu-nvidia-{words}"


def parse_cpuinfo(text: str, arch: str, cores: int) -> CpuInfo:
    """A CpuInfo from the text of /proc/cpuinfo (the first processor's `model name` and `flags`)."""
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split()) & frozenset(_REPORTED_FLAGS)
    return CpuInfo(model=model or platform.processor() or arch, arch=arch, cores=cores, flags=flags)


@cache
def host_cpu() -> CpuInfo:
    """This machine's CPU (read once). Off Linux, flags are unknown and the set is empty."""
    arch = platform.machine().lower() or "unknown"
    cores = os.cpu_count() or 1
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return CpuInfo(model=platform.processor() or arch, arch=arch, cores=cores, flags=frozenset())
    return parse_cpuinfo(text, arch, cores)


# Kubernetes node labels the classes are read from: the kubelet's architecture label, Node Feature
# Discovery's CPUID features (`feature.node.kubernetes.io/cpu-cpuid.AVX512VNNI=true`) and NVIDIA GPU
# feature discovery's product (`nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3`)
ARCH_LABEL = "kubernetes.io/arch"
NFD_CPUID_PREFIX = "feature.node.kubernetes.io/cpu-cpuid."
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
_NFD_FEATURES = {
    "AMXINT8": "amx_int8",
    "AVX512VNNI": "avx512_vnni",
    "AVXVNNI": "avx_vnni",
    "ASIMDDP": "asimddp",
    "AVX512BW": "avx512bw",
    "AVX2": "avx2",
}


@dataclass(frozen=True)
class NodeClasses:
    """The hardware classes of one node: its CPU's (None when the labels do not say the architecture) and
    its GPU's (None without a GPU product label)."""

    cpu: str | None
    gpu: str | None


def node_classes(labels: dict[str, str]) -> NodeClasses:
    """A node's classes from its labels (`ARCH_LABEL`, `NFD_CPUID_PREFIX`<feature>, `GPU_PRODUCT_LABEL`).

    Without Node Feature Discovery a node has only its architecture, so an x86 node is `cpu-x86`: nothing
    says it has AVX2, and a variant measured on AVX2 is not assumed to fit it.
    """
    arch = labels.get(ARCH_LABEL)
    flags = frozenset(
        flag for feature, flag in _NFD_FEATURES.items() if labels.get(NFD_CPUID_PREFIX + feature) == "true"
    )
    product = labels.get(GPU_PRODUCT_LABEL, "").strip()
    return NodeClasses(cpu=cpu_class(arch, flags) if arch else None, gpu=gpu_class(product) if product else None)
