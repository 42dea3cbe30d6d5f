"""The machine a measurement was taken on: CPU model, architecture and the instruction sets that change
what quantized kernels compute and how fast.

ONNX Runtime's integer GEMM on x86 uses VNNI (`vpdpbusd`, AVX-512 VNNI or AVX-VNNI) or AMX where the CPU
has them; without them it multiplies u8 x s8 pairs with `vpmaddubsw`, whose 16-bit sums saturate when
weights use the full 8-bit range. So an INT8 model's accuracy, not only its speed, depends on the CPU.
"""

from __future__ import annotations

import os
import platform
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
        """A short name for the class of CPUs a measurement stands for, e.g. `x86_64-avx512_vnni`, `x86_64-avx2`."""
        if self.int8_dot_product is not None:
            return f"{self.arch}-{self.int8_dot_product}"
        for flag in ("avx512bw", "avx2"):
            if flag in self.flags:
                return f"{self.arch}-{flag}"
        return self.arch

    def describe(self) -> dict[str, object]:
        """JSON-ready: model, arch, cores, the class and the flags that matter."""
        return {
            "model": self.model,
            "arch": self.arch,
            "cores": self.cores,
            "hardware_class": self.hardware_class,
            "flags": sorted(self.flags),
        }


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
