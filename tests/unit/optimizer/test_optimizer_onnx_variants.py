"""Precision variants, measurement and the edge runner on a small real ONNX model built with torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from sklearn.metrics import f1_score
from torch import nn

from gallery_common.nn import export_onnx
from gallery_common.nn.stored import load_stored_model, stored_parts
from gallery_common.onnx_safety import verify_self_contained_onnx
from gallery_optimizer.measure import load_split, macro_f1, peak_memory_bytes, predict, session_from_file
from gallery_optimizer.quantize import fp16, int8_dynamic, int8_static, topologically_sort

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


@pytest.mark.parametrize("variant", ["dynamic", "static"])
def test_int8_variants_are_a_third_the_size_and_agree(variant: str, fp32: Path, tmp_path: Path) -> None:
    out = tmp_path / f"{variant}.onnx"
    if variant == "dynamic":
        int8_dynamic(fp32, out)
    else:
        int8_static(fp32, out, X[:100])
    verify_self_contained_onnx(out.read_bytes())
    assert out.stat().st_size < 0.33 * fp32.stat().st_size
    reference = predict(session_from_file(fp32), X).argmax(axis=1)
    assert np.mean(predict(session_from_file(out), X).argmax(axis=1) == reference) > 0.9


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
