"""Precision variants, measurement and the edge runner on a small real ONNX model built with torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from sklearn.metrics import f1_score
from torch import nn

from gallery_common.hardware import host_cpu, parse_cpuinfo
from gallery_common.nn import export_onnx
from gallery_common.nn.stored import load_stored_model, stored_parts
from gallery_common.onnx_safety import verify_self_contained_onnx
from gallery_optimizer.measure import load_split, macro_f1, peak_memory_bytes, predict, session_from_file
from gallery_optimizer.quantize import fp16, int8_build, int8_dynamic, int8_static, topologically_sort

# the accuracy an INT8 variant may lose against FP32 on the test split (the optimizer's default budget is 1 point;
# 2 points here leaves room for kernels that round differently, and catches saturation, which costs far more)
ACCURACY_BUDGET = 0.02
RNG = np.random.default_rng(0)
X = RNG.normal(size=(200, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 5)).eval()
    path = tmp_path_factory.mktemp("fp32") / "model.onnx"
    export_onnx(model, 32, path)
    return path


def test_fp16_keeps_fp32_io_passes_the_checker_and_matches_fp32(fp32: Path, tmp_path: Path) -> None:
    out = fp16(fp32, tmp_path / "fp16.onnx")
    model = verify_self_contained_onnx(out.read_bytes())
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    reference, half = predict(session_from_file(fp32), X), predict(session_from_file(out), X)
    np.testing.assert_allclose(half, reference, atol=2e-2)
    assert out.stat().st_size < 0.6 * fp32.stat().st_size


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    """An MLP trained on scikit-learn's digits (standardised inside the model), exported to ONNX."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x.astype(np.float32), y, test_size=0.3, random_state=0, stratify=y
    )
    torch.manual_seed(0)
    std = x_train.std(axis=0)
    mean, scale = x_train.mean(axis=0), np.where(std > 0, std, 1.0).astype(np.float32)  # as StandardScaler does
    model = nn.Sequential(
        Standardise(mean, scale), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    features, labels = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(60):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(features), labels).backward()
        optimiser.step()
    path = tmp_path_factory.mktemp("digits") / "fp32.onnx"
    export_onnx(model.eval(), 64, path)
    return Digits(path, x_test, y_test)


class Standardise(nn.Module):
    def __init__(self, mean: np.ndarray, scale: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("scale", torch.from_numpy(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


@dataclass
class Digits:
    fp32: Path
    x_test: np.ndarray
    y_test: np.ndarray

    def accuracy(self, path: Path) -> float:
        return float((predict(session_from_file(path), self.x_test).argmax(axis=1) == self.y_test).mean())


def quantize(variant: str, digits: Digits, out: Path, reduce_range: bool) -> Path:
    if variant == "dynamic":
        return int8_dynamic(digits.fp32, out, reduce_range=reduce_range)
    return int8_static(digits.fp32, out, digits.x_test[:200], reduce_range=reduce_range)


@pytest.mark.parametrize("variant", ["dynamic", "static"])
def test_int8_variants_built_for_this_cpu_are_a_third_the_size_and_keep_their_accuracy(
    variant: str, digits: Digits, tmp_path: Path
) -> None:
    build = int8_build("auto", host_cpu())
    out = quantize(variant, digits, tmp_path / f"{variant}.onnx", build.reduce_range)
    verify_self_contained_onnx(out.read_bytes())
    assert out.stat().st_size < 0.33 * digits.fp32.stat().st_size
    fp32 = digits.accuracy(digits.fp32)
    assert fp32 > 0.9, "the test model did not learn digits"
    assert digits.accuracy(out) >= fp32 - ACCURACY_BUDGET


# Run under valgrind, whose emulated CPU reports AVX2 and no AVX-512, VNNI or AMX: ONNX Runtime then
# takes the `vpmaddubsw` kernels of an AVX2-only machine, whatever CPU runs the test.
AVX2_RUNNER = """
import sys
import numpy as np
import onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
np.save(sys.argv[3], session.run(None, {"features": np.load(sys.argv[2])})[0])
"""


@pytest.mark.parametrize("variant", ["dynamic", "static"])
def test_portable_int8_variants_answer_the_same_on_a_cpu_without_vnni(
    variant: str, digits: Digits, tmp_path: Path
) -> None:
    valgrind = shutil.which("valgrind")
    assert valgrind, "valgrind is not installed: run `make test`, which installs it"
    build = int8_build("portable", host_cpu())
    out = quantize(variant, digits, tmp_path / f"{variant}.onnx", build.reduce_range)
    np.save(tmp_path / "x.npy", digits.x_test)
    (tmp_path / "runner.py").write_text(AVX2_RUNNER)
    emulated = subprocess.run(
        [
            valgrind,
            "--tool=none",
            "-q",
            sys.executable,
            str(tmp_path / "runner.py"),
            str(out),
            str(tmp_path / "x.npy"),
            str(tmp_path / "avx2.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert emulated.returncode == 0, emulated.stderr[-2000:]
    avx2 = np.load(tmp_path / "avx2.npy")
    # one batch, as the runner does: dynamic quantization picks its activation range per batch
    here = session_from_file(out).run(None, {"features": digits.x_test})[0]
    # 7-bit weights never saturate, so every CPU sums the same integers; full 8-bit weights differ by
    # whole logits on an AVX2 CPU where this one has VNNI
    assert np.abs(avx2 - here).max() <= 1e-3 * np.abs(here).max()
    assert float((avx2.argmax(axis=1) == digits.y_test).mean()) >= digits.accuracy(digits.fp32) - ACCURACY_BUDGET


def test_int8_target_follows_the_cpu_unless_told() -> None:
    avx2 = parse_cpuinfo("model name\t: Some CPU\nflags\t\t: fpu sse avx2 fma\n", "x86_64", 2)
    vnni = parse_cpuinfo("model name\t: Other CPU\nflags\t\t: avx2 avx512f avx512bw avx512_vnni\n", "x86_64", 8)
    assert (avx2.hardware_class, vnni.hardware_class) == ("cpu-x86-avx2", "cpu-x86-avx512-vnni")
    assert int8_build("auto", avx2).reduce_range is True
    assert int8_build("auto", vnni).reduce_range is False
    assert int8_build("portable", vnni).reduce_range is True
    assert "any CPU" in int8_build("portable", vnni).cpu_target
    assert "VNNI" in int8_build("int8_dot", avx2).cpu_target


def test_topological_sort_puts_producers_first() -> None:
    add = onnx.helper.make_node("Add", ["a", "b"], ["c"])
    relu = onnx.helper.make_node("Relu", ["x"], ["a"])
    tensor = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [add, relu],
        "g",
        [tensor("x", onnx.TensorProto.FLOAT, [1]), tensor("b", onnx.TensorProto.FLOAT, [1])],
        [tensor("c", onnx.TensorProto.FLOAT, [1])],
    )
    topologically_sort(graph)
    assert [n.op_type for n in graph.node] == ["Relu", "Add"]


def test_macro_f1_matches_scikit_learn() -> None:
    y = RNG.integers(0, 4, size=300)
    predicted = np.where(RNG.random(300) < 0.7, y, RNG.integers(0, 4, size=300))
    assert macro_f1(y, predicted) == pytest.approx(f1_score(y, predicted, average="macro"))


def test_peak_memory_counts_a_bigger_model_as_bigger(fp32: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.onnx"
    export_onnx(nn.Sequential(nn.Linear(32, 2048), nn.ReLU(), nn.Linear(2048, 2048)).eval(), 32, big)
    small, large = peak_memory_bytes(fp32, 32), peak_memory_bytes(big, 32)
    assert small >= fp32.stat().st_size
    assert large > small + big.stat().st_size  # the 16 MiB of weights are resident once loaded


def test_a_split_without_labels_is_refused_by_name(tmp_path: Path) -> None:
    np.savez(tmp_path / "test_split.npz", x=X)
    with pytest.raises(ValueError, match=r"test_split.npz: a split needs arrays 'x' and 'y'"):
        load_split(tmp_path / "test_split.npz")


def test_a_malformed_stored_spec_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="preprocessing"):
        stored_parts({"job": {"model": {}}, "architecture": {"n_outputs": 3}})
    spec = {
        "job": {"model": {"hidden": [8]}},
        "architecture": {"n_outputs": 3, "image_shape": None},
        "preprocessing": {"mean": [0.0] * 4, "scale": [1.0] * 4},
    }
    from safetensors.torch import save_file

    save_file({"network.1.weight": torch.zeros(2, 2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="do not fit the stored architecture"):
        load_stored_model(spec, tmp_path / "w.safetensors")


def test_the_runner_refuses_rows_of_the_wrong_width_and_a_tampered_model(fp32: Path, tmp_path: Path) -> None:
    import hashlib

    from gallery_optimizer import edge_runner

    (tmp_path / "run.py").write_bytes(Path(edge_runner.__file__).read_bytes())
    (tmp_path / "model.onnx").write_bytes(fp32.read_bytes())
    signature = {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 32]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 5]}],
        "sha256": hashlib.sha256(fp32.read_bytes()).hexdigest(),
    }
    (tmp_path / "signature.json").write_text(json.dumps(signature))
    (tmp_path / "classes.json").write_text(json.dumps(list("abcde")))
    np.savetxt(tmp_path / "rows.csv", X[:3, :10], delimiter=",")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "run.py", *args], cwd=tmp_path, capture_output=True, text=True)

    wrong = run("rows.csv")
    assert wrong.returncode != 0 and "expected rows of 32 features, got shape (3, 10)" in wrong.stderr
    np.savetxt(tmp_path / "rows.csv", X[:3], delimiter=",")
    good = run("rows.csv")
    assert good.returncode == 0, good.stderr
    expected = predict(session_from_file(fp32), X[:3]).argmax(axis=1)
    assert good.stdout.split() == ["abcde"[i] for i in expected]
    (tmp_path / "model.onnx").write_bytes(fp32.read_bytes() + b"\0")
    tampered = run("rows.csv")
    assert tampered.returncode != 0 and "does not match the sha256" in tampered.stderr
