"""Precision variants of the FP32 ONNX model: INT8 dynamic, INT8 static (QDQ, calibrated) and FP16."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from gallery_common.hardware import CpuInfo
from gallery_common.nn import INPUT_NAME
from gallery_common.onnx_safety import verify_self_contained_onnx

# a text model's vectorizer: ONNX Runtime has these only with FP32 outputs, so FP16 conversion leaves them be
TEXT_OPS = ("StringNormalizer", "StringSplit", "TfIdfVectorizer", "RegexFullMatch", "StringConcat")
CALIBRATION_ROWS = 512
CALIBRATION_BATCH = 32

Int8Target = Literal["auto", "portable", "int8_dot"]
"""Which CPUs an INT8 variant is built for: `portable` (any CPU), `int8_dot` (VNNI, AMX or Arm dotprod),
`auto` (the one this optimizer runs on, so the variant keeps its accuracy where it is measured)."""


@dataclass(frozen=True)
class Int8Build:
    """How INT8 variants are quantized for a target, and what to tell a reader about it."""

    target: Literal["portable", "int8_dot"]
    reduce_range: bool

    @property
    def cpu_target(self) -> str:
        if self.reduce_range:
            return "any CPU (7-bit weights)"
        return "CPUs with an INT8 dot product (AVX-512 VNNI, AVX-VNNI, AMX or Arm dotprod)"

    @property
    def note(self) -> str:
        if self.reduce_range:
            return (
                "7-bit weights (reduce_range): no u8 x s8 saturation on CPUs without VNNI, so it keeps its "
                "accuracy on any x86 CPU"
            )
        return (
            "full 8-bit weights: exact on CPUs with VNNI/AMX; on AVX2-only CPUs their u8 x s8 sums can saturate "
            "and lose accuracy"
        )


def int8_build(target: Int8Target, cpu: CpuInfo) -> Int8Build:
    """The quantization settings for `target`; `auto` asks `cpu` whether it has an INT8 dot product.

    ONNX Runtime's x86 kernels without VNNI multiply with `vpmaddubsw`, whose 16-bit pair sums saturate
    for full-range 8-bit weights (ONNX Runtime's quantization docs); 7-bit weights cannot saturate.
    """
    if target == "auto":
        target = "int8_dot" if cpu.int8_dot_product is not None else "portable"
    return Int8Build(target=target, reduce_range=target == "portable")


def _quiet_quantizer() -> None:
    # onnxruntime.quantization logs a "consider pre-processing" warning per call on the root logger
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))


def int8_dynamic(fp32: Path, out: Path, *, reduce_range: bool = True) -> Path:
    """INT8 weights, activations quantized at run time (`quantize_dynamic`, signed INT8 weights).

    `reduce_range` keeps weights to 7 bits, which no CPU's integer kernels saturate on (see `int8_build`).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = single_opsets(verify_self_contained_onnx(fp32.read_bytes()))
    _quiet_quantizer()
    quantize_dynamic(model, out, weight_type=QuantType.QInt8, per_channel=False, reduce_range=reduce_range)
    return out


class _Calibration:
    """The validation rows (features or texts) in batches for input `name`, as `quantize_static`'s
    CalibrationDataReader wants them."""

    def __init__(self, x: np.ndarray, name: str = INPUT_NAME) -> None:
        self._name = name
        self._batches: Iterator[np.ndarray] = iter(
            [np.ascontiguousarray(x[i : i + CALIBRATION_BATCH]) for i in range(0, len(x), CALIBRATION_BATCH)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._name: batch}


def int8_static(fp32: Path, out: Path, calibration_x: np.ndarray, seed: int = 0, *, reduce_range: bool = True) -> Path:
    """INT8 weights and activations in QDQ format, ranges calibrated (min/max) on `calibration_x`.

    Only the weighted operators are quantized: the baked-in preprocessing sees raw features whose
    columns can differ in scale by orders of magnitude, and one INT8 range for them would lose them. A
    text model calibrates on texts (`calibration_x` unicode [N]); its vectorizer stays as it is.
    `reduce_range` keeps weights to 7 bits, which no CPU's integer kernels saturate on (see `int8_build`).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = single_opsets(verify_self_contained_onnx(fp32.read_bytes()))
    rows = np.random.default_rng(seed).permutation(len(calibration_x))[:CALIBRATION_ROWS]
    _quiet_quantizer()
    quantize_static(
        model,
        out,
        _Calibration(_calibration_rows(calibration_x[rows]), _input_name(model)),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=reduce_range,
        calibrate_method=CalibrationMethod.MinMax,
        op_types_to_quantize=["Gemm", "MatMul", "Conv"],
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    return out


def single_opsets(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with one opset import per domain: `onnx.compose.merge_models` (how a text model's vectorizer
    and network are joined) lists a domain once per model, and ONNX Runtime's quantizer then finds no
    ai.onnx opset ("Failed to find proper ai.onnx domain")."""
    seen: dict[str, int] = {}
    for opset in model.opset_import:
        seen[opset.domain] = max(opset.version, seen.get(opset.domain, 0))
    if len(seen) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(onnx.helper.make_opsetid(domain, version) for domain, version in seen.items())
    return model


def _calibration_rows(x: np.ndarray) -> np.ndarray:
    return x if x.dtype.kind == "U" else x.astype(np.float32)


def _input_name(model: onnx.ModelProto) -> str:
    """The graph's one real input (initializers listed as inputs excluded)."""
    initializers = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    return names[0] if names else INPUT_NAME


# what a quantized graph holds: QDQ pairs (static), or dynamic quantization's integer kernels
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "DynamicQuantizeMatMul",
        "MatMulInteger",
        "ConvInteger",
        "QLinearMatMul",
        "QLinearConv",
        "QGemm",
    }
)


def require_quantized(variant: Path, name: str) -> Path:
    """`variant`, once it holds a quantized operator; else ValueError naming the operators it has: a graph
    without Gemm, MatMul or Conv (a tree ensemble) comes out of the quantizer as it went in, and an
    "INT8" variant that is FP32 would be measured, recommended and deployed as if it were not."""
    graph = onnx.load(str(variant), load_external_data=False).graph
    ops = {node.op_type for node in graph.node}
    if ops & QUANTIZED_OPS:
        return variant
    shown = ", ".join(sorted(ops)[:8])
    raise ValueError(f"{name} quantized nothing: the graph has no Gemm, MatMul or Conv to quantize ({shown})")


def fp16(fp32: Path, out: Path) -> Path:
    """FP16 weights and arithmetic with FP32 inputs and outputs kept (`keep_io_types`), for GPU serving."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = verify_self_contained_onnx(fp32.read_bytes())
    classic_ml = sorted({n.op_type for n in model.graph.node if n.domain == "ai.onnx.ml"} - set(TEXT_OPS))
    if classic_ml:
        # ONNX Runtime's converter mistypes the graph around them even when they are blocked (seen with
        # skl2onnx's TreeEnsembleClassifier and LinearClassifier: the session then refuses to load), and
        # they have no GPU kernels, where FP16 pays
        raise ValueError(f"FP16 is not built for a graph of ONNX-ML operators ({', '.join(classic_ml)})")
    blocked = [*DEFAULT_OP_BLOCK_LIST, *TEXT_OPS]
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked)
    topologically_sort(converted.graph)
    onnx.save_model(converted, str(out))
    return out


def topologically_sort(graph: onnx.GraphProto) -> None:
    """Reorder `graph.node` so every node follows the producers of its inputs (the FP16 converter appends
    its input casts at the end, which `onnx.checker` refuses)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            missing = sorted({name for n in pending for name in n.input if name not in available})
            raise ValueError(f"the graph has a cycle or undefined inputs: {missing[:5]}")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)
