"""Tensor descriptions: Open Inference Protocol datatypes, their numpy dtypes and ONNX Runtime's names."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# ONNX Runtime reports input types as "tensor(float)" and so on.
ORT_TO_OIP: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

OIP_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

NUMPY_TO_OIP: dict[np.dtype, str] = {dtype: name for name, dtype in OIP_TO_NUMPY.items()}


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: its name, OIP datatype and shape (-1 for a dimension of any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return OIP_TO_NUMPY[self.datatype]

    @property
    def batched(self) -> bool:
        """True when the first dimension is free, so requests can be stacked along it."""
        return len(self.shape) > 0 and self.shape[0] == -1

    def metadata(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def spec_from_ort(name: str, ort_type: str, shape: list[object]) -> TensorSpec:
    """A TensorSpec from what ONNX Runtime reports; symbolic or unknown dimensions become -1."""
    datatype = ORT_TO_OIP.get(ort_type)
    if datatype is None:
        raise ValueError(f"tensor {name!r} has type {ort_type}, which the Open Inference Protocol cannot carry")
    dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)
    return TensorSpec(name, datatype, dims)
