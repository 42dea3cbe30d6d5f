"""The export of a text model: the vectorizer graph in front of the trained network, one self-contained ONNX
file that takes raw texts (`text`, tensor(string) [N]; BYTES over OIP) and gives `logits` FP32 [N, C].

The network is exported as for any model (`features` in), raised to the vectorizer's opset with ONNX's
version converter, and joined to the vectorizer with `onnx.compose.merge_models`, its `features` input
fed by the vectorizer's `text_features`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import compose, version_converter

from gallery_common.events import Signature, TensorSpec
from gallery_common.nn import INPUT_NAME, OUTPUT_NAME, ExportedModel
from gallery_trainer.export import ExportError, check_self_contained, export_onnx, torch_outputs
from gallery_trainer.text_vectorizer import FEATURES_OUTPUT, TEXT_INPUT, TEXT_IR_VERSION, TEXT_OPSET, graph_features


def export_text_onnx(model: ExportedModel, vectorizer: onnx.ModelProto, n_features: int, path: Path) -> None:
    """Write the vectorizer followed by `model` as one ONNX file at `path`; ExportError says what failed."""
    network_path = path.with_name(path.stem + ".network.onnx")
    try:
        export_onnx(model, n_features, network_path)
        network = version_converter.convert_version(onnx.load(str(network_path)), TEXT_OPSET)
    finally:
        network_path.unlink(missing_ok=True)
    network.ir_version = TEXT_IR_VERSION
    try:
        merged = compose.merge_models(vectorizer, network, io_map=[(FEATURES_OUTPUT, INPUT_NAME)])
        merged.ir_version = TEXT_IR_VERSION
        onnx.checker.check_model(merged, full_check=True)
    except (ValueError, onnx.checker.ValidationError) as exc:
        raise ExportError(f"joining the vectorizer and the network: {exc}") from None
    onnx.save(merged, str(path))
    check_self_contained(path)


def text_onnx_outputs(path: Path, texts: np.ndarray) -> np.ndarray:
    """Run the text model at `path` on raw texts with ONNX Runtime on the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run([OUTPUT_NAME], {TEXT_INPUT: np.asarray(texts, dtype=str).reshape(-1)})[0])


def text_parity_max_abs_diff(
    model: ExportedModel, vectorizer: onnx.ModelProto, path: Path, texts: np.ndarray
) -> tuple[float, np.ndarray]:
    """The largest absolute difference between the network in PyTorch on the vectorizer's features and the
    exported file on the raw texts, and the exported file's outputs."""
    expected = torch_outputs(model, graph_features(vectorizer, texts))
    actual = text_onnx_outputs(path, texts)
    if actual.shape != expected.shape:
        raise ExportError(f"ONNX output shape {actual.shape} differs from PyTorch's {expected.shape}")
    return float(np.abs(actual - expected).max(initial=0.0)), actual


def text_signature(n_outputs: int) -> Signature:
    """A text model's tensors: `text` BYTES [-1] in (one text per row), `logits` FP32 [-1, C] out."""
    return Signature(
        inputs=[TensorSpec(name=TEXT_INPUT, datatype="BYTES", shape=[-1])],
        outputs=[TensorSpec(name=OUTPUT_NAME, datatype="FP32", shape=[-1, n_outputs])],
    )
