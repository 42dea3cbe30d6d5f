"""Hardware classes from /proc/cpuinfo texts, nvidia-smi names and Kubernetes node labels, and the execution
targets a host offers (with the interpreters and nvidia-smi described by fakes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gallery_common.hardware import gpu_class, node_classes, parse_cpuinfo
from gallery_common.targets import detect_targets, interpreter_providers

# the lines that matter of real /proc/cpuinfo files, shortened
EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2
"""
XEON_VNNI = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni
"""
SAPPHIRE_RAPIDS = """model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: avx2 avx512f avx512bw avx512_vnni avx_vnni amx_bf16 amx_tile amx_int8
"""
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma asimddp
CPU implementer\t: 0x41
"""
RASPBERRY_PI = """processor\t: 0
Features\t: fp asimd evtstrm crc32 cpuid
Hardware\t: BCM2835
"""


@pytest.mark.parametrize(
    ("text", "arch", "expected"),
    [
        (EPYC_AVX2, "x86_64", "cpu-x86-avx2"),
        (XEON_VNNI, "x86_64", "cpu-x86-avx512-vnni"),
        (SAPPHIRE_RAPIDS, "x86_64", "cpu-x86-amx"),
        (GRAVITON3, "aarch64", "cpu-arm64-dotprod"),
        (RASPBERRY_PI, "aarch64", "cpu-arm64"),
        ("model name\t: QEMU Virtual CPU\nflags\t\t: fpu sse sse2\n", "x86_64", "cpu-x86"),
    ],
)
def test_a_cpu_is_classed_by_the_instruction_set_that_decides_kernel_speed(text: str, arch: str, expected: str) -> None:
    assert parse_cpuinfo(text, arch, 4).hardware_class == expected


def test_the_reported_cpu_keeps_its_model_and_class() -> None:
    cpu = parse_cpuinfo(XEON_VNNI, "x86_64", 8).describe()
    assert cpu["model"] == "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz"
    assert cpu["hardware_class"] == "cpu-x86-avx512-vnni"


def test_nvidia_smi_names_and_gpu_feature_discovery_labels_give_the_same_class() -> None:
    assert gpu_class("NVIDIA H100 80GB HBM3") == "gpu-nvidia-h100-80gb-hbm3"
    assert gpu_class("NVIDIA-H100-80GB-HBM3") == "gpu-nvidia-h100-80gb-hbm3"
    assert gpu_class("Tesla T4") == "gpu-nvidia-tesla-t4"
    with pytest.raises(ValueError, match="names no model"):
        gpu_class("NVIDIA")


def test_node_labels_give_the_cpu_and_gpu_classes() -> None:
    nfd = "feature.node.kubernetes.io/cpu-cpuid."
    vnni = {"kubernetes.io/arch": "amd64", nfd + "AVX2": "true", nfd + "AVX512BW": "true", nfd + "AVX512VNNI": "true"}
    assert node_classes(vnni).cpu == "cpu-x86-avx512-vnni"
    gpu = {"kubernetes.io/arch": "amd64", nfd + "AVX2": "true", "nvidia.com/gpu.product": "NVIDIA-A10G"}
    assert (node_classes(gpu).cpu, node_classes(gpu).gpu) == ("cpu-x86-avx2", "gpu-nvidia-a10g")
    # without Node Feature Discovery nothing says the node has AVX2
    assert node_classes({"kubernetes.io/arch": "amd64"}).cpu == "cpu-x86"
    assert node_classes({"kubernetes.io/arch": "arm64", nfd + "ASIMDDP": "true"}).cpu == "cpu-arm64-dotprod"
    assert node_classes({}).cpu is None
    # a feature label that is not "true" is no feature
    assert node_classes({"kubernetes.io/arch": "amd64", nfd + "AVX2": "false"}).cpu == "cpu-x86"


def no_gpu() -> str:
    raise FileNotFoundError("nvidia-smi")


def test_a_cpu_host_with_openvino_offers_the_cpu_and_openvino_targets(tmp_path: Path) -> None:
    python = tmp_path / "python"
    targets = detect_targets(
        cpu_class="cpu-x86-avx2",
        openvino_python=python,
        openvino_providers=lambda _: ["OpenVINOExecutionProvider", "CPUExecutionProvider"],
        local_providers=lambda: ["CPUExecutionProvider"],
        gpu_names=no_gpu,
    )
    assert [t.key for t in targets.present] == ["cpu-x86-avx2/cpu", "cpu-x86-avx2/openvino"]
    assert [t.python for t in targets.present] == [sys.executable, str(python)]
    assert targets.absent == {"tensorrt": "no GPU", "cuda": "no GPU"}


def test_without_the_openvino_interpreter_only_the_cpu_is_offered_and_the_reason_given(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "python"
    targets = detect_targets(
        cpu_class="cpu-x86-avx2",
        openvino_python=missing,
        local_providers=lambda: ["CPUExecutionProvider"],
        gpu_names=no_gpu,
    )
    assert [t.key for t in targets.present] == ["cpu-x86-avx2/cpu"]
    assert targets.absent["openvino"] == f"no interpreter at {missing}"


def test_a_plain_onnxruntime_is_not_taken_for_openvino() -> None:
    # this interpreter's onnxruntime is the plain build: asked as if it were OpenVINO's, it lacks the provider
    assert "OpenVINOExecutionProvider" not in interpreter_providers(Path(sys.executable))
    targets = detect_targets(
        cpu_class="cpu-x86-avx2",
        openvino_python=Path(sys.executable),
        local_providers=lambda: ["CPUExecutionProvider"],
        gpu_names=no_gpu,
    )
    assert targets.absent["openvino"] == f"the onnxruntime of {sys.executable} has no OpenVINOExecutionProvider"


def test_a_gpu_host_offers_tensorrt_and_cuda_on_the_gpu_class_when_onnxruntime_has_them(tmp_path: Path) -> None:
    def smi() -> str:
        return "NVIDIA H100 80GB HBM3\nNVIDIA H100 80GB HBM3\n"

    gpu = detect_targets(
        cpu_class="cpu-x86-avx512-vnni",
        openvino_python=tmp_path / "python",
        local_providers=lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        gpu_names=smi,
    )
    assert [t.key for t in gpu.present] == [
        "cpu-x86-avx512-vnni/cpu",
        "gpu-nvidia-h100-80gb-hbm3/tensorrt",
        "gpu-nvidia-h100-80gb-hbm3/cuda",
    ]
    plain = detect_targets(
        cpu_class="cpu-x86-avx512-vnni",
        openvino_python=tmp_path / "python",
        local_providers=lambda: ["CPUExecutionProvider"],
        gpu_names=smi,
    )
    assert plain.absent["cuda"] == "this interpreter's onnxruntime has no CUDAExecutionProvider"


def test_a_failing_nvidia_smi_means_no_gpu(tmp_path: Path) -> None:
    def broken() -> str:
        raise subprocess.CalledProcessError(9, ["nvidia-smi"])

    targets = detect_targets(
        cpu_class="cpu-x86-avx2",
        openvino_python=tmp_path / "python",
        local_providers=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
        gpu_names=broken,
    )
    assert targets.absent["cuda"] == "no GPU"
    assert [t.provider for t in targets.present] == ["cpu"]
