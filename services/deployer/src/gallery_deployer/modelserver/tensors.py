"""ONNX Runtime's tensor types as Open Inference Protocol tensor descriptions."""

from __future__ import annotations

from gallery_common.contracts.oip import TensorSpec

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


def spec_from_ort(name: str, ort_type: str, shape: list[object]) -> TensorSpec:
    """A TensorSpec from what ONNX Runtime reports; symbolic or unknown dimensions become -1."""
    datatype = ORT_TO_OIP.get(ort_type)
    if datatype is None:
        raise ValueError(f"tensor {name!r} has type {ort_type}, which the Open Inference Protocol cannot carry")
    dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)
    return TensorSpec(name, datatype, dims)
