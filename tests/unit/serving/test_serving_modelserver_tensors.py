"""ONNX Runtime's tensor types as the OIP tensor descriptions a model server's metadata shows."""

from __future__ import annotations

import pytest

from gallery_deployer.modelserver.tensors import spec_from_ort


def test_symbolic_dimensions_become_minus_one() -> None:
    spec = spec_from_ort("x", "tensor(float)", ["batch", 4, None])
    assert (spec.datatype, spec.shape) == ("FP32", (-1, 4, -1))
    with pytest.raises(ValueError, match="cannot carry"):
        spec_from_ort("x", "seq(tensor(float))", [])
