"""ONNX export: raw features in, preprocessing in the graph, one self-contained file, parity with PyTorch."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import save_file

from gallery_common.nn import ExportedModel, build_network
from gallery_trainer.data import load_dataset
from gallery_trainer.engine.job import RankJob
from gallery_trainer.export import (
    ExportError,
    check_self_contained,
    export_onnx,
    load_trained_model,
    onnx_outputs,
    parity_max_abs_diff,
    signature,
)
from gallery_trainer.prepare import PreparedData, TargetScaling, prepare
from gallery_trainer.spec import DataSpec, ModelSpec, PreparationSpec, parse_spec

PREPARATION = PreparationSpec(select_k_best=40, pca={"components": 20})


@pytest.fixture(scope="module")
def digits() -> PreparedData:
    return prepare(load_dataset(DataSpec(source="builtin", name="digits")), PREPARATION)


def model_for(prepared: PreparedData, target: TargetScaling | None = None, outputs: int = 10) -> ExportedModel:
    torch.manual_seed(0)
    network = build_network(ModelSpec(hidden=[32, 16], activation="gelu"), prepared.transform, outputs, None)
    return ExportedModel(network, target or TargetScaling()).eval()


def test_onnx_matches_pytorch_on_the_test_split(digits: PreparedData, tmp_path: Path) -> None:
    model = model_for(digits)
    export_onnx(model, 64, tmp_path / "model.onnx")
    diff, outputs = parity_max_abs_diff(model, tmp_path / "model.onnx", digits.test.x)
    assert diff < 1e-4
    assert outputs.shape == (len(digits.test), 10)


def test_preprocessing_is_baked_in_so_raw_features_go_in(digits: PreparedData, tmp_path: Path) -> None:
    model = model_for(digits)
    export_onnx(model, 64, tmp_path / "model.onnx")
    raw = digits.test.x
    from_onnx = onnx_outputs(tmp_path / "model.onnx", raw)
    # the same network fed features preprocessed outside the graph
    layers_only = torch.nn.Sequential(*list(model.network)[1:])
    with torch.no_grad():
        expected = layers_only(torch.from_numpy(digits.transform.apply(raw))).numpy()
    np.testing.assert_allclose(from_onnx, expected, atol=1e-4)
    assert from_onnx.shape == (len(raw), 10)


def test_one_self_contained_file_with_a_dynamic_batch(digits: PreparedData, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    export_onnx(model_for(digits), 64, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    graph = onnx.load(str(path), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["features"] and [o.name for o in graph.output] == ["logits"]
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 64 and isinstance(dims[0], str)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in graph.initializer)
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    for batch in (1, 7):
        assert onnx_outputs(path, digits.test.x[:batch]).shape == (batch, 10)


def test_a_model_with_external_data_is_rejected(digits: PreparedData, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    export_onnx(model_for(digits), 64, path)
    split = tmp_path / "split"
    split.mkdir()
    onnx.save_model(
        onnx.load(str(path)), str(split / "model.onnx"), save_as_external_data=True, location="w.data", size_threshold=0
    )
    with pytest.raises(ExportError, match="refers to external data"):
        check_self_contained(split / "model.onnx")


def test_regression_outputs_come_back_in_target_units(digits: PreparedData, tmp_path: Path) -> None:
    target = TargetScaling(mean=250.0, scale=40.0)
    model = model_for(digits, target, outputs=1)
    export_onnx(model, 64, tmp_path / "model.onnx")
    with torch.no_grad():
        standardised = model.network(torch.from_numpy(digits.test.x)).numpy()
    np.testing.assert_allclose(onnx_outputs(tmp_path / "model.onnx", digits.test.x), standardised * 40 + 250, atol=1e-3)


def test_weights_reload_into_the_same_model(digits: PreparedData, tmp_path: Path) -> None:
    spec = parse_spec(
        {
            "name": "digits",
            "data": {"source": "builtin", "name": "digits"},
            "preparation": PREPARATION.model_dump(),
            "model": {"hidden": [32, 16], "activation": "gelu"},
        }
    )
    job = RankJob(spec, tmp_path, "classification", 64, 10, None, None, digits.transform, TargetScaling())
    model = model_for(digits)
    save_file(model.state_dict(), str(tmp_path / "weights.safetensors"))
    reloaded = load_trained_model(job, tmp_path / "weights.safetensors")
    x = torch.from_numpy(digits.test.x)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x))


def test_signature_names_the_tensors() -> None:
    sig = signature(64, 10)
    assert sig.inputs[0].model_dump() == {"name": "features", "datatype": "FP32", "shape": [-1, 64]}
    assert sig.outputs[0].model_dump() == {"name": "logits", "datatype": "FP32", "shape": [-1, 10]}
