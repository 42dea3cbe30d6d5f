"""A torch model to one self-contained ONNX file: raw `features` [-1, F] in, `logits` [-1, C] out."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import torch
from torch import nn

from gallery_common.contracts.names import INPUT_NAME, OUTPUT_NAME

OPSET = 17
# the TorchScript exporter traces through process-wide state; exports finishing together take turns
_EXPORT_LOCK = threading.Lock()


def export_onnx(model: nn.Module, n_features: int, path: Path) -> None:
    """Write `model` (in eval mode) as one ONNX file with all weights inside and a dynamic batch axis."""
    example = torch.zeros(2, n_features, dtype=torch.float32)
    with _EXPORT_LOCK, warnings.catch_warnings():
        # the TorchScript exporter warns that it is the older path; it exports these models exactly
        # and in a fraction of the dynamo exporter's time
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            external_data=False,
            dynamo=False,
        )
