"""PyTorch models described as data, shared by the trainer (which trains them) and the optimizer (which
rebuilds, prunes, distils and re-exports them). Importing this subpackage imports torch."""

from .architectures import (
    ACTIVATIONS,
    ExportedModel,
    FeaturePreprocessor,
    Reshape,
    TargetScale,
    build_layers,
    build_network,
    describe,
)
from .onnx_export import INPUT_NAME, OPSET, OUTPUT_NAME, export_onnx
from .stored import StoredArchitecture, StoredTransform, load_stored_model

__all__ = [
    "ACTIVATIONS",
    "INPUT_NAME",
    "OPSET",
    "OUTPUT_NAME",
    "ExportedModel",
    "FeaturePreprocessor",
    "Reshape",
    "StoredArchitecture",
    "StoredTransform",
    "TargetScale",
    "build_layers",
    "build_network",
    "describe",
    "export_onnx",
    "load_stored_model",
]
