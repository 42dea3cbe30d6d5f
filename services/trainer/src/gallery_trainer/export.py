"""The FP32 ONNX export: raw features in (`features` [-1, F]), `logits` [-1, C] out, the preprocessing in
the graph, all weights inside the one file; checked against PyTorch before anyone gets it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from safetensors.torch import load_file

from gallery_common.events import Signature, TensorSpec
from gallery_common.nn import INPUT_NAME, OUTPUT_NAME, ExportedModel, build_network
from gallery_common.nn import export_onnx as write_onnx
from gallery_trainer.engine.job import RankJob

PARITY_TOLERANCE = 1e-4


class ExportError(Exception):
    """The ONNX file is unusable; the message says why."""


def load_trained_model(job: RankJob, weights: Path) -> ExportedModel:
    """The trained model from its safetensors weights, in eval mode, on the CPU."""
    network = build_network(job.spec.model, job.transform, job.n_outputs, job.image_shape)
    model = ExportedModel(network, job.target)
    model.load_state_dict(load_file(str(weights)))
    return model.eval()


def export_onnx(model: ExportedModel, n_features: int, path: Path) -> None:
    """Write `model` as one self-contained ONNX file with a dynamic batch axis."""
    write_onnx(model, n_features, path)
    check_self_contained(path)


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield attribute.sparse_tensor.values
                yield attribute.sparse_tensor.indices
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def check_self_contained(path: Path) -> None:
    """Raise ExportError if any tensor of the model refers to external data."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            raise ExportError(f"{path.name}: tensor {tensor.name!r} refers to external data")


def onnx_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    """Run the ONNX file with ONNX Runtime on the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0])


def torch_outputs(model: ExportedModel, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def parity_max_abs_diff(model: ExportedModel, path: Path, x: np.ndarray) -> tuple[float, np.ndarray]:
    """The largest absolute difference between PyTorch and ONNX Runtime outputs on `x`, and ORT's outputs."""
    expected = torch_outputs(model, x)
    actual = onnx_outputs(path, x)
    if actual.shape != expected.shape:
        raise ExportError(f"ONNX output shape {actual.shape} differs from PyTorch's {expected.shape}")
    return float(np.abs(actual - expected).max(initial=0.0)), actual


def signature(n_features: int, n_outputs: int) -> Signature:
    """The exported model's tensors: `features` FP32 [-1, F] in, `logits` FP32 [-1, C] out."""
    return Signature(
        inputs=[TensorSpec(name=INPUT_NAME, datatype="FP32", shape=[-1, n_features])],
        outputs=[TensorSpec(name=OUTPUT_NAME, datatype="FP32", shape=[-1, n_outputs])],
    )
