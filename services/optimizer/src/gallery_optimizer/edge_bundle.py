"""The edge bundle: the recommended ONNX model with everything needed to run it away from Model Gallery.

A text model's bundle (one string input, the vectorizer inside the graph) runs raw texts: one per line of
a UTF-8 .txt file, or a 1-D .npy array of strings; its signature names the input BYTES [-1]."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from gallery_common.nn import INPUT_NAME, OUTPUT_NAME
from gallery_common.onnx_safety import verify_self_contained_onnx

if TYPE_CHECKING:
    from gallery_optimizer.pipeline import OptimizeInputs
    from gallery_optimizer.report import OptimizationReport

BUNDLE_FILES = ("model.onnx", "signature.json", "preprocessing.json", "classes.json", "run.py", "README.txt")

_README = """Model Gallery edge bundle: {model} version {version}, variant {variant}

  pip install numpy onnxruntime
  python run.py rows.csv                       # one predicted class per line
  python run.py rows.npy --output preds.json   # also predictions, class indices, logits as JSON

Input: raw features, {n_features} per row (CSV without header, or a 2-D .npy array).
The preprocessing (see preprocessing.json) is inside model.onnx; do not apply it again.
model.onnx: input {input_name!r} FP32 [batch, {n_features}], output {output_name!r} FP32 [batch, {n_classes}].
Test accuracy {accuracy}, batch-32 p50 latency {latency} ms when it was measured.
"""

_REGRESSOR_README = """Model Gallery edge bundle: {model} version {version}, variant {variant} (a regressor)

  pip install numpy onnxruntime
  python run.py rows.csv                       # each row's {n_classes} prediction(s) per line, comma-separated
  python run.py rows.npy --output preds.json   # also the predictions as JSON

Input: raw features, {n_features} per row (CSV without header, or a 2-D .npy array).
The preprocessing (see preprocessing.json) is inside model.onnx; do not apply it again.
model.onnx: input {input_name!r} FP32 [batch, {n_features}], output {output_name!r} FP32 [batch, {n_classes}]:
the predictions in the targets' units.
Test r2 {accuracy}, batch-32 p50 latency {latency} ms when it was measured.
"""

_TEXT_README = """Model Gallery edge bundle: {model} version {version}, variant {variant}

  pip install numpy onnxruntime
  python run.py texts.txt                        # one text per line (UTF-8); one predicted class per line
  python run.py texts.npy --output preds.json    # a 1-D array of strings; also class indices, logits as JSON

Input: raw texts. The tokenizer and vectorizer are inside model.onnx (standard ONNX operators); do not
tokenize the texts yourself.
model.onnx: input {input_name!r} string [batch], output {output_name!r} FP32 [batch, {n_classes}].
Test accuracy {accuracy}, batch-32 p50 latency {latency} ms when it was measured.
"""


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    archive.addfile(info, io.BytesIO(data))


def _classes(inputs: OptimizeInputs, n_classes: int) -> list[str]:
    names = inputs.class_names or (inputs.spec or {}).get("class_names")
    if names and len(names) == n_classes:
        return [str(n) for n in names]
    return [str(i) for i in range(n_classes)]


def _score_text(score: float | None, regression: bool) -> str:
    if score is None:
        return "n/a"
    return f"{score:.4f}" if regression else f"{score:.2%}"


def build_edge_bundle(report: OptimizationReport, inputs: OptimizeInputs, workdir: Path) -> Path:
    """Write `workdir/edge_bundle.tar.gz`: the recommended variant as model.onnx, signature.json (tensors, the
    task and the model's sha256), preprocessing.json, classes.json (empty for a regressor), run.py (numpy +
    onnxruntime only) and README.txt."""
    from gallery_optimizer import edge_runner

    chosen = report.recommended_variant
    source = chosen.path if chosen.ok and chosen.path is not None else inputs.onnx
    model_bytes = source.read_bytes()
    graph = verify_self_contained_onnx(model_bytes).graph
    text = graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.STRING
    input_name = graph.input[0].name if text else INPUT_NAME
    n_features = 0 if text else graph.input[0].type.tensor_type.shape.dim[1].dim_value
    n_classes = graph.output[0].type.tensor_type.shape.dim[1].dim_value
    spec = inputs.spec or {}
    tensor_in = (
        {"name": input_name, "datatype": "BYTES", "shape": [-1]}
        if text
        else {"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, n_features]}
    )
    signature: dict[str, Any] = {
        "inputs": [tensor_in],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, n_classes]}],
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "model": report.model,
        "version": report.version,
        "variant": chosen.name if chosen.ok else "fp32",
        "task": report.task,
    }
    preprocessing = {
        "applied_inside_model": True,
        "feature_names": spec.get("feature_names"),
        **(spec.get("preprocessing") or {}),
    }
    regression = report.task == "regression"
    readme = (_TEXT_README if text else _REGRESSOR_README if regression else _README).format(
        model=report.model,
        version=report.version,
        variant=signature["variant"],
        n_features=n_features,
        n_classes=n_classes,
        input_name=input_name,
        output_name=OUTPUT_NAME,
        accuracy=_score_text(chosen.score, regression),
        latency="n/a" if chosen.latency_b32_p50_ms is None else f"{chosen.latency_b32_p50_ms:.3f}",
    )
    contents = {
        "model.onnx": model_bytes,
        "signature.json": json.dumps(signature, indent=2).encode(),
        "preprocessing.json": json.dumps(preprocessing).encode(),
        "classes.json": json.dumps([] if regression else _classes(inputs, n_classes)).encode(),
        "run.py": Path(edge_runner.__file__).read_bytes(),
        "README.txt": readme.encode(),
    }
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "edge_bundle.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name in BUNDLE_FILES:
            _add(archive, name, contents[name])
    return path
