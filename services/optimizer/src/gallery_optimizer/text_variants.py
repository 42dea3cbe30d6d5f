"""Variants of a text model (one string input, the vectorizer inside the ONNX graph, `logits` out).

INT8 and FP16 work on the graph as they do on a table model's (they touch only the float part behind the
vectorizer). Distillation keeps the teacher's vectorizer as it is: the graph is cut at the vectorizer's
output (the last `TfIdfVectorizer`), a small MLP student learns the numeric part behind it from the
teacher's softened outputs on the vectorized training texts, and the student is attached again behind
the same vectorizer, so the variant takes raw texts like its teacher. Pruning needs the trainer's PyTorch
network, which for a text model does not hold the vectorizer; it is not built, and the report says why.

Every run of the untrusted teacher (its vectorizer and its numeric part) happens in a sandboxed child
through `measure.run_model`. Blocking (torch, child processes): call from a worker thread.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from gallery_common.nn import OUTPUT_NAME
from gallery_common.onnx_safety import verify_self_contained_onnx

VECTORIZER_OP = "TfIdfVectorizer"
PRUNING_SKIPPED = (
    "not built for a text model: pruning fine-tunes the trainer's PyTorch network and exports it with a numeric "
    "input, and a text model's vectorizer lives only in its ONNX graph"
)

Run = Callable[[Path, np.ndarray, str], np.ndarray]
"""Runs the model at a path on rows in a sandboxed child and gives its output (`measure.run_model`)."""


class VariantSkipped(Exception):
    """A variant that does not apply to this model; the message is the reason the report gives."""


@dataclass(frozen=True)
class TextStudent:
    """The distilled text model written to `path`, and what a reader of the report should know about it."""

    path: Path
    notes: list[str]


def is_text_model(model: onnx.ModelProto) -> bool:
    """The graph takes strings: its one real input is tensor(string)."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    return len(inputs) == 1 and inputs[0].type.tensor_type.elem_type == TensorProto.STRING


def split_at_vectorizer(model: onnx.ModelProto) -> tuple[onnx.ModelProto, onnx.ModelProto, str]:
    """The vectorizer (texts in, word vectors out), the numeric head (word vectors in, `logits` out) and
    the name of the tensor between them; VariantSkipped when the graph has no `TfIdfVectorizer`."""
    vectorizers = [n for n in model.graph.node if n.op_type == VECTORIZER_OP]
    if not vectorizers:
        raise VariantSkipped(
            f"not built: the text model has no {VECTORIZER_OP} node to keep while the numeric part is distilled"
        )
    vector = vectorizers[-1].output[0]
    text_input = model.graph.input[0].name
    extractor = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(model))
    vectorizer = extractor.extract_model([text_input], [vector])
    head = extractor.extract_model([vector], [OUTPUT_NAME])
    for part in (vectorizer, head):
        part.ir_version = model.ir_version
    return vectorizer, head, vector


def distill_text(
    teacher: Path,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    out: Path,
    run: Run,
    *,
    hidden: list[int],
    epochs: int,
    temperature: float,
    seed: int,
) -> TextStudent:
    """A student MLP with `hidden` layers behind the teacher's own vectorizer, trained for `epochs` on the
    teacher's outputs at `temperature` over the vectorized training texts (plus mixup blends of them)."""
    from gallery_optimizer.distill import TRANSFER_COPIES, distillation_loss, transfer_set
    from gallery_optimizer.training import train as fit

    model = verify_self_contained_onnx(teacher.read_bytes())
    vectorizer, head, vector = split_at_vectorizer(model)
    with tempfile.TemporaryDirectory(prefix="gallery-text-distill-") as tmp:
        vectorizer_path, head_path = Path(tmp) / "vectorizer.onnx", Path(tmp) / "head.onnx"
        onnx.save_model(vectorizer, str(vectorizer_path))
        onnx.save_model(head, str(head_path))
        vectors = run(vectorizer_path, train[0], "the teacher's vectorizer on the training texts")
        checked = run(vectorizer_path, validation[0], "the teacher's vectorizer on the validation texts")
        rows = transfer_set(vectors, TRANSFER_COPIES, seed)
        logits = run(head_path, rows, "the teacher's predictions")
    labels = np.concatenate([train[1], logits[len(vectors) :].argmax(axis=1)])
    torch.manual_seed(seed)
    student = _mlp(vectors.shape[1], hidden, logits.shape[1])
    fit(
        student,
        rows,
        labels,
        epochs=epochs,
        loss_fn=distillation_loss(temperature),
        targets=logits,
        validation=(checked, validation[1]),
        lr=3e-3,
        seed=seed,
    )
    onnx.save_model(_attach(vectorizer, vector, student), str(out))
    parameters = sum(p.numel() for p in student.parameters())
    return TextStudent(
        out,
        [
            f"student MLP {hidden} behind the teacher's own vectorizer ({vectors.shape[1]} word features), "
            f"{parameters:,} parameters, T={temperature:g}"
        ],
    )


def _mlp(width: int, hidden: list[int], classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def _attach(vectorizer: onnx.ModelProto, vector: str, student: nn.Sequential) -> onnx.ModelProto:
    """The vectorizer graph with the student's layers (MatMul, Add, Relu) behind `vector`, out as `logits`."""
    graph = vectorizer.graph
    linears = [m for m in student if isinstance(m, nn.Linear)]
    current = vector
    for index, layer in enumerate(linears):
        weight = layer.weight.detach().numpy().T.astype(np.float32)
        bias = layer.bias.detach().numpy().astype(np.float32)
        last = index == len(linears) - 1
        graph.initializer.extend(
            [numpy_helper.from_array(weight, f"student_w{index}"), numpy_helper.from_array(bias, f"student_b{index}")]
        )
        scores = OUTPUT_NAME if last else f"student_z{index}"
        graph.node.extend(
            [
                helper.make_node("MatMul", [current, f"student_w{index}"], [f"student_m{index}"]),
                helper.make_node("Add", [f"student_m{index}", f"student_b{index}"], [scores]),
            ]
        )
        if not last:
            graph.node.append(helper.make_node("Relu", [scores], [f"student_h{index}"]))
            current = f"student_h{index}"
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", linears[-1].out_features])
    )
    graph.name = "distilled_text_classifier"
    onnx.checker.check_model(vectorizer)
    return vectorizer
