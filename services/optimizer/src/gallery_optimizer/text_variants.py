"""Variants of a text model (one string input, the vectorizer inside the ONNX graph, `logits` out).

INT8 and FP16 work on the graph as they do on a table model's (they touch only the float part behind the
vectorizer). Pruning and distillation keep the teacher's vectorizer as it is: the graph is cut where the
vectorizer ends (the trainer's `text_features` tensor, else the last `TfIdfVectorizer`'s output), the
training and validation texts are vectorized by that part of the graph, the numeric part is pruned (the
trainer's PyTorch network, from its spec and weights, fine-tuned on the vectors) or distilled (a small
MLP student on the teacher's softened outputs), and the result is attached again behind the same
vectorizer, so every variant takes raw texts like its teacher.

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

from gallery_common.nn import INPUT_NAME, OUTPUT_NAME
from gallery_common.onnx_safety import verify_self_contained_onnx
from gallery_optimizer.quantize import single_opsets

VECTORIZER_OP = "TfIdfVectorizer"
# where the trainer's text models join vectorizer and network (gallery_trainer.text_vectorizer.FEATURES_OUTPUT)
FEATURES_TENSOR = "text_features"

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
    the name of the tensor between them; VariantSkipped when the graph has neither a `text_features`
    tensor nor a `TfIdfVectorizer`."""
    produced = {name for node in model.graph.node for name in node.output}
    vectorizers = [n for n in model.graph.node if n.op_type == VECTORIZER_OP]
    if FEATURES_TENSOR in produced:
        vector = FEATURES_TENSOR
    elif vectorizers:
        vector = vectorizers[-1].output[0]
    else:
        raise VariantSkipped(
            f"not built: the text model has no {FEATURES_TENSOR!r} tensor or {VECTORIZER_OP} node, so there is "
            "no vectorizer to keep while the numeric part is rebuilt"
        )
    text_input = model.graph.input[0].name
    extractor = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(model))
    vectorizer = extractor.extract_model([text_input], [vector])
    head = extractor.extract_model([vector], [OUTPUT_NAME])
    for part in (vectorizer, head):
        part.ir_version = model.ir_version
    return vectorizer, head, vector


@dataclass(frozen=True)
class TextFeatures:
    """A text model cut where its vectorizer ends: the vectorizer, the numeric head behind it, the tensor
    between them, and the training and validation splits as that vectorizer's outputs (with their labels)."""

    vectorizer: onnx.ModelProto
    head: onnx.ModelProto
    cut: str
    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]

    @property
    def width(self) -> int:
        """Features per text: what the numeric part takes."""
        return int(self.train[0].shape[1])

    def attach(self, network: Path) -> None:
        """Rewrite `network` (an ONNX file taking `features` FP32 [-1, width]) with the vectorizer in front of
        it, so it takes raw texts; the network is raised to the vectorizer's opset first."""
        from onnx import compose, version_converter

        opset = next(o.version for o in self.vectorizer.opset_import if o.domain in ("", "ai.onnx"))
        numeric = version_converter.convert_version(onnx.load_model(str(network)), opset)
        numeric.ir_version = self.vectorizer.ir_version
        merged = single_opsets(compose.merge_models(self.vectorizer, numeric, io_map=[(self.cut, INPUT_NAME)]))
        merged.ir_version = self.vectorizer.ir_version
        onnx.checker.check_model(merged)
        onnx.save_model(merged, str(network))


def text_features(
    teacher: Path, train: tuple[np.ndarray, np.ndarray], validation: tuple[np.ndarray, np.ndarray], run: Run
) -> TextFeatures:
    """The teacher cut at its vectorizer, with the training and validation texts vectorized by it (run in a
    sandboxed child); VariantSkipped when the graph has no vectorizer to cut at."""
    vectorizer, head, cut = split_at_vectorizer(verify_self_contained_onnx(teacher.read_bytes()))
    with tempfile.TemporaryDirectory(prefix="gallery-text-vectors-") as tmp:
        path = Path(tmp) / "vectorizer.onnx"
        onnx.save_model(vectorizer, str(path))
        vectors = run(path, train[0], "the teacher's vectorizer on the training texts")
        checked = run(path, validation[0], "the teacher's vectorizer on the validation texts")
    return TextFeatures(vectorizer, head, cut, (vectors, train[1]), (checked, validation[1]))


def distill_text(
    features: TextFeatures,
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

    vectors, labels = features.train
    rows = transfer_set(vectors, TRANSFER_COPIES, seed)
    with tempfile.TemporaryDirectory(prefix="gallery-text-distill-") as tmp:
        head_path = Path(tmp) / "head.onnx"
        onnx.save_model(features.head, str(head_path))
        logits = run(head_path, rows, "the teacher's predictions")
    targets = np.concatenate([labels, logits[len(vectors) :].argmax(axis=1)])
    torch.manual_seed(seed)
    student = _mlp(features.width, hidden, logits.shape[1])
    fit(
        student,
        rows,
        targets,
        epochs=epochs,
        loss_fn=distillation_loss(temperature),
        targets=logits,
        validation=features.validation,
        lr=3e-3,
        seed=seed,
    )
    onnx.save_model(_attach(features.vectorizer, features.cut, student), str(out))
    parameters = sum(p.numel() for p in student.parameters())
    return TextStudent(
        out,
        [
            f"student MLP {hidden} behind the teacher's own vectorizer ({features.width} word features), "
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


def _attach(template: onnx.ModelProto, vector: str, student: nn.Sequential) -> onnx.ModelProto:
    """A copy of the vectorizer graph `template` with the student's layers (MatMul, Add, Relu) behind
    `vector`, out as `logits`."""
    vectorizer = onnx.ModelProto()
    vectorizer.CopyFrom(template)
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
