"""An ONNX classifier or regressor trained elsewhere, brought to the contract every Model Gallery version
keeps: one input `features` FP32 [-1, F] (a text classifier's: `text` string [-1], one text per row), one
output `logits` FP32 [-1, C] (a regressor's predictions [-1, K] under the same name, as the trainer
exports them).

What a converter wrote is adapted where the meaning is certain, and refused with the reason where it is
not:

- the one input is renamed `features` (an Identity, or a Cast when the model takes FP64); its batch
  dimension is made variable when the file fixed it; an input whose rows are not flat (a picture
  [N, C, H, W]) takes each row flattened, in row-major order, and is reshaped inside;
- the scores become `logits`: a float output [N, C] as it is, or, when it holds probabilities (skl2onnx's
  ZipMap, an output named like `probabilities`, or `scores="probabilities"`), their logarithm, so that a
  softmax of the logits gives the probabilities back;
- a text classifier's string input (a scikit-learn pipeline's [N, 1] as skl2onnx writes it, or [N]) is
  renamed `text` [N], made a column inside where the model takes [N, 1]; its StringNormalizers lower-case
  in C.UTF-8 (a converter's en_US.UTF-8 is missing on many machines, where the model would not load);
- a regressor's one float output is its predictions: [N] becomes one column [N, 1];
- the outputs that are not the scores (a predicted label) and the ZipMap that turned scores into a list
  of maps are dropped, with the nodes only they used.

Refused: several inputs, an input that is not float (or a text classifier's strings) or whose rows have
no fixed shape, a text regressor, no float
output of rank 2, several without a way to tell which holds the scores, and graphs that already use the
names `features` (`text`) or `logits` for another tensor. The graph is only rewritten here, never run: the caller
runs the result in a sandbox (`gallery_trainer.imports`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from gallery_common.contracts.names import INPUT_NAME, OUTPUT_NAME, TEXT_INPUT, TEXT_LOCALE
from gallery_common.errors import InvalidRequest
from gallery_common.onnx_safety import verify_self_contained_onnx

if TYPE_CHECKING:
    import onnx

Scores = Literal["auto", "logits", "probabilities"]
Task = Literal["classification", "regression"]
# what the output held: a classifier's logits or probabilities, a regressor's predicted values
Kind = Literal["logits", "probabilities", "values"]
# the smallest probability the logarithm is taken of: log(0) would be -inf, which JSON cannot carry
PROBABILITY_FLOOR = 1e-12
# ONNX's `Max` with two inputs and `Log` of FP32, both in every opset from 8
MIN_OPSET = 8
# `Reshape` with its shape as an input
MIN_RESHAPE_OPSET = 5
UNSQUEEZE_AXES_INPUT_OPSET = 13
_PROBABILITY_WORDS = ("prob",)
_ZIPMAP = "ZipMap"


class ModelRefused(InvalidRequest):
    """The ONNX file cannot be brought to the `features` / `logits` contract; the message says why."""


@dataclass
class Adapted:
    """The adapted model's bytes, its feature count, and each change made, in words a user reads."""

    model: bytes
    features: int  # numeric features per row; 0 for a text model
    scores: Kind
    changes: list[str] = field(default_factory=list)
    text: bool = False  # the model takes `text` [N], one string per row


def adapt_model(data: bytes, task: Task = "classification", scores: Scores = "auto") -> Adapted:
    """Bring the ONNX classifier (or regressor) in `data` to the contract, or raise ModelRefused (or
    UnsafeOnnxModel for a file that is not one safe ONNX model) saying why."""
    import onnx

    model = verify_self_contained_onnx(data)
    graph = model.graph
    source_input = _one_input(graph)
    text = _takes_strings(source_input)
    input_name = TEXT_INPUT if text else INPUT_NAME
    _check_names_free(graph, input_name)
    if text:
        if task == "regression":
            raise ModelRefused(f"input {source_input.name!r} takes texts: a text model is imported as a classifier")
        text_rank, width = _text_layout(source_input), 0
    else:
        row, input_type = _input_layout(source_input)
        width = math.prod(row)
    if task == "regression":
        source_output, zipmap_output = _predictions_output(graph), None
        kind: Kind = "values"
    else:
        source_output, zipmap_output = _scores_output(graph)
        kind = _score_kind(source_output.name, zipmap_output is not None, scores)
    changes: list[str] = []
    opset = _default_opset(model)

    if text:
        new_nodes, initializers, input_changes = _text_input_steps(graph, source_input, text_rank, opset)
        input_changes += _portable_locales(graph)
    else:
        new_nodes, initializers, input_changes = _input_steps(graph, source_input, row, input_type, opset)
    changes += input_changes
    if not _batch_is_variable(source_input):
        changes.append("the input's first dimension (the batch) is now variable")
    if zipmap_output is not None:
        changes.append(
            f"output {zipmap_output!r} (a ZipMap: one map per row) is dropped for {source_output.name!r}, "
            "the same probabilities as a matrix"
        )

    output_type = source_output.type.tensor_type.elem_type
    one_per_row = _rank(source_output) == 1  # a regressor's [N]: made [N, 1], one target per row
    wrapped = output_type == onnx.TensorProto.DOUBLE or kind == "probabilities" or one_per_row
    if wrapped and source_output.name == OUTPUT_NAME:
        _rename(graph, OUTPUT_NAME, "gallery_source_logits")
    score_name = "gallery_source_logits" if wrapped and source_output.name == OUTPUT_NAME else source_output.name
    tail: list[onnx.NodeProto] = []
    if one_per_row:
        tail.append(_unsqueeze_rows(score_name, "gallery_predictions", opset, initializers))
        score_name = "gallery_predictions"
        changes.append(f"output {source_output.name!r} [N] is now one column [N, 1]")
    if output_type == onnx.TensorProto.DOUBLE:
        tail.append(onnx.helper.make_node("Cast", [score_name], ["gallery_scores_fp32"], to=onnx.TensorProto.FLOAT))
        score_name = "gallery_scores_fp32"
    if kind == "probabilities":
        if opset < MIN_OPSET:
            raise ModelRefused(f"the model's opset is {opset}; turning probabilities into logits needs {MIN_OPSET}")
        floor = onnx.helper.make_tensor("gallery_probability_floor", onnx.TensorProto.FLOAT, [], [PROBABILITY_FLOOR])
        initializers.append(floor)
        tail.append(onnx.helper.make_node("Max", [score_name, floor.name], ["gallery_probabilities"]))
        tail.append(onnx.helper.make_node("Log", ["gallery_probabilities"], [OUTPUT_NAME]))
        changes.append(f"{source_output.name!r} holds probabilities: {OUTPUT_NAME!r} is their logarithm")
    elif score_name != OUTPUT_NAME:
        tail.append(onnx.helper.make_node("Identity", [score_name], [OUTPUT_NAME]))
        changes.append(f"output {source_output.name!r} is now {OUTPUT_NAME!r}")
    if output_type == onnx.TensorProto.DOUBLE:
        changes.append(f"output {source_output.name!r} (FP64) is cast to FP32")
    dropped = [o.name for o in graph.output if o.name not in (source_output.name, zipmap_output)]
    if dropped:
        what = "the predictions" if task == "regression" else "the scores"
        changes.append(f"outputs dropped (not {what}): " + ", ".join(repr(n) for n in dropped))

    if not changes:
        return Adapted(model=data, features=width, scores=kind, text=text)

    rebuilt = onnx.helper.make_graph(
        nodes=[*new_nodes, *graph.node, *tail],
        name=graph.name or "imported",
        inputs=[
            onnx.helper.make_tensor_value_info(TEXT_INPUT, onnx.TensorProto.STRING, ["batch"])
            if text
            else onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, ["batch", width]),
            # an input that is also an initializer (a default value) stays an input of the graph
            *(i for i in graph.input if i.name != source_input.name),
        ],
        outputs=[onnx.helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, ["batch", None])],
        initializer=[*graph.initializer, *initializers],
        value_info=[v for v in graph.value_info if v.name not in (source_input.name, score_name)],
    )
    rebuilt.sparse_initializer.extend(graph.sparse_initializer)
    _drop_unused(rebuilt)
    model.graph.CopyFrom(rebuilt)
    if opset == 0:
        model.opset_import.append(onnx.helper.make_opsetid("", MIN_OPSET))
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelRefused(f"the adapted model is not valid ONNX: {first_line}") from None
    return Adapted(model=model.SerializeToString(), features=width, scores=kind, changes=changes, text=text)


def declare_output_width(adapted: Adapted, width: int) -> Adapted:
    """`adapted` with its output declared [batch, `width`] once running it told the width: readers of the
    file alone (the edge bundle's signature, a serving runtime) take the class count from the graph."""
    import onnx

    model = onnx.load_from_string(adapted.model)
    tensor = model.graph.output[0].type.tensor_type
    dims = tensor.shape.dim
    if len(dims) == 2 and dims[1].HasField("dim_value") and dims[1].dim_value == width:
        return adapted
    if len(dims) != 2:
        tensor.shape.Clear()
        tensor.shape.dim.add().dim_param = "batch"
        tensor.shape.dim.add()
    tensor.shape.dim[1].Clear()
    tensor.shape.dim[1].dim_value = width
    change = f"output {OUTPUT_NAME!r} declares its width: [N, {width}]"
    return Adapted(
        model.SerializeToString(), adapted.features, adapted.scores, [*adapted.changes, change], adapted.text
    )


def _check_names_free(graph: onnx.GraphProto, input_name: str) -> None:
    """`input_name` (`features`, or a text model's `text`) and `logits` may be the graph's own input and
    output, never another tensor of it."""
    inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    for name in (input_name, OUTPUT_NAME):
        used = name in {init.name for init in graph.initializer} or any(name in node.output for node in graph.node)
        if used and name not in outputs and name not in inputs:
            raise ModelRefused(f"the graph already has an inner tensor named {name!r}; rename it before importing")


def _one_input(graph: onnx.GraphProto) -> onnx.ValueInfoProto:
    constants = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in constants]
    if len(inputs) != 1:
        names = ", ".join(repr(i.name) for i in inputs) or "none"
        raise ModelRefused(f"the model takes {len(inputs)} inputs ({names}); an imported model takes one matrix")
    return inputs[0]


def _input_steps(
    graph: onnx.GraphProto, source: onnx.ValueInfoProto, row: list[int], input_type: int, opset: int
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], list[str]]:
    """The nodes (and their constants) that turn `features` FP32 [N, F] into what the model takes, and the
    changes in words: a reshape for a row that is not flat (a picture [C, H, W]), a cast for FP64."""
    import onnx

    steps: list[tuple[str, list[str], dict[str, Any]]] = []
    constants: list[onnx.TensorProto] = []
    changes: list[str] = []
    if len(row) > 1:
        if opset < MIN_RESHAPE_OPSET:
            raise ModelRefused(f"the model's opset is {opset}; flattening its input needs {MIN_RESHAPE_OPSET}")
        shape = onnx.helper.make_tensor("gallery_row_shape", onnx.TensorProto.INT64, [len(row) + 1], [-1, *row])
        constants.append(shape)
        steps.append(("Reshape", [shape.name], {}))
        shown = ", ".join(str(d) for d in row)
        changes.append(
            f"input {source.name!r} [N, {shown}] now takes each row flattened: {INPUT_NAME!r} [N, {math.prod(row)}], "
            "reshaped inside"
        )
    if input_type == onnx.TensorProto.DOUBLE:
        steps.append(("Cast", [], {"to": onnx.TensorProto.DOUBLE}))
        changes.append(f"input {source.name!r} (FP64) is now {INPUT_NAME!r} (FP32, cast to FP64 inside)")
    if not steps and source.name != INPUT_NAME:
        steps.append(("Identity", [], {}))
    if steps and source.name != INPUT_NAME and not any(c.startswith("input") for c in changes):
        changes.append(f"input {source.name!r} is now {INPUT_NAME!r}")
    if steps and source.name == INPUT_NAME:
        _rename(graph, INPUT_NAME, "gallery_source_features")
        source.name = "gallery_source_features"
    nodes, current = [], INPUT_NAME
    for i, (op, extra, attributes) in enumerate(steps):
        out = source.name if i == len(steps) - 1 else f"gallery_input_{i}"
        nodes.append(onnx.helper.make_node(op, [current, *extra], [out], **attributes))
        current = out
    return nodes, constants, changes


def _takes_strings(value: onnx.ValueInfoProto) -> bool:
    import onnx

    return value.type.HasField("tensor_type") and value.type.tensor_type.elem_type == onnx.TensorProto.STRING


def _text_layout(value: onnx.ValueInfoProto) -> int:
    """The rank of a text input that takes one text per row: 1 ([N]) or 2 ([N, 1], as skl2onnx writes a
    text pipeline's input), or ModelRefused."""
    tensor = value.type.tensor_type
    dims = tensor.shape.dim if tensor.HasField("shape") else []
    if len(dims) == 1:
        return 1
    if len(dims) == 2 and dims[1].HasField("dim_value") and dims[1].dim_value == 1:
        return 2
    shown = "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else "?" for d in dims) + "]"
    raise ModelRefused(
        f"input {value.name!r} takes strings {shown if dims else 'of no declared shape'}; a text model takes one "
        "text per row: [N] or [N, 1]"
    )


def _text_input_steps(
    graph: onnx.GraphProto, source: onnx.ValueInfoProto, rank: int, opset: int
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], list[str]]:
    """The node that turns `text` [N] into what the model takes ([N, 1]: a column; another name: the same
    tensor), its constants, and the change in words."""
    import onnx

    if rank == 1 and source.name == TEXT_INPUT:
        return [], [], []
    original = source.name
    if source.name == TEXT_INPUT:
        _rename(graph, TEXT_INPUT, "gallery_source_text")
        source.name = "gallery_source_text"
    constants: list[onnx.TensorProto] = []
    if rank == 2:
        node = _unsqueeze_rows(TEXT_INPUT, source.name, opset, constants)
        change = f"input {original!r} [N, 1] is now {TEXT_INPUT!r} [N], one text per row (made a column inside)"
    else:
        node = onnx.helper.make_node("Identity", [TEXT_INPUT], [source.name])
        change = f"input {original!r} is now {TEXT_INPUT!r}"
    return [node], constants, [change]


def _portable_locales(graph: onnx.GraphProto) -> list[str]:
    """Each StringNormalizer lower-cases (or upper-cases) in `TEXT_LOCALE`: the locale a converter names
    (skl2onnx: en_US.UTF-8, ONNX Runtime's default too) is missing on many machines, where the model would
    not load at all. Changed in place; returns the changes in words."""
    import onnx

    changes = []
    for node in graph.node:
        if node.op_type != "StringNormalizer" or node.domain not in ("", "ai.onnx"):
            continue
        found = next((a for a in node.attribute if a.name == "locale"), None)
        current = found.s.decode(errors="replace") if found is not None else ""
        if current == TEXT_LOCALE:
            continue
        if found is not None:
            found.s = TEXT_LOCALE.encode()
        else:
            node.attribute.append(onnx.helper.make_attribute("locale", TEXT_LOCALE))
        was = repr(current) if current else "the default (en_US.UTF-8)"
        changes.append(
            f"StringNormalizer {node.name or node.output[0]!r} lower-cases in {TEXT_LOCALE} instead of {was}, "
            "which many machines lack"
        )
    return changes


def _input_layout(value: onnx.ValueInfoProto) -> tuple[list[int], int]:
    """The dimensions of one row (all but the batch's: [F], or [C, H, W] for a picture) and the element
    type of a float input whose rows have a fixed shape, or ModelRefused."""
    import onnx

    if not value.type.HasField("tensor_type"):
        raise ModelRefused(f"input {value.name!r} is not a tensor; an imported model takes a float matrix [N, F]")
    tensor = value.type.tensor_type
    if tensor.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        kind = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type) if tensor.elem_type else "untyped"
        raise ModelRefused(f"input {value.name!r} holds {kind}; an imported model takes FP32 or FP64 features")
    dims = tensor.shape.dim if tensor.HasField("shape") else []
    if len(dims) < 2:
        raise ModelRefused(f"input {value.name!r} has rank {len(dims)}; an imported model takes rows [N, ...]")
    if any(not d.HasField("dim_value") or d.dim_value < 1 for d in dims[1:]):
        raise ModelRefused(f"input {value.name!r} does not fix the shape of a row (every dimension but the first)")
    return [d.dim_value for d in dims[1:]], tensor.elem_type


def _batch_is_variable(value: onnx.ValueInfoProto) -> bool:
    first = value.type.tensor_type.shape.dim[0]
    return not first.HasField("dim_value") or first.dim_value <= 0


def _is_float_matrix(value: onnx.ValueInfoProto) -> bool:
    import onnx

    if not value.type.HasField("tensor_type"):
        return False
    tensor = value.type.tensor_type
    if tensor.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        return False
    return not tensor.HasField("shape") or len(tensor.shape.dim) == 2


def _rank(value: onnx.ValueInfoProto) -> int | None:
    tensor = value.type.tensor_type
    return len(tensor.shape.dim) if value.type.HasField("tensor_type") and tensor.HasField("shape") else None


def _predictions_output(graph: onnx.GraphProto) -> onnx.ValueInfoProto:
    """A regressor's output: its one float output of [N] or [N, K] predictions."""
    import onnx

    candidates = [
        o
        for o in graph.output
        if o.type.HasField("tensor_type")
        and o.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)
        and _rank(o) in (1, 2, None)
    ]
    names = ", ".join(repr(o.name) for o in (candidates or graph.output))
    if not candidates:
        raise ModelRefused(f"no output holds predictions as floats [N] or [N, K] (outputs: {names})")
    if len(candidates) > 1:
        raise ModelRefused(f"several outputs could hold the predictions ({names}); export the model with one")
    return candidates[0]


def _unsqueeze_rows(name: str, out: str, opset: int, constants: list[onnx.TensorProto]) -> onnx.NodeProto:
    """[N] -> [N, 1]: Unsqueeze takes its axes as an attribute before opset 13 and as an input from it."""
    import onnx

    if opset >= UNSQUEEZE_AXES_INPUT_OPSET:
        axes = onnx.helper.make_tensor("gallery_column_axis", onnx.TensorProto.INT64, [1], [1])
        constants.append(axes)
        return onnx.helper.make_node("Unsqueeze", [name, axes.name], [out])
    return onnx.helper.make_node("Unsqueeze", [name], [out], axes=[1])


def _scores_output(graph: onnx.GraphProto) -> tuple[onnx.ValueInfoProto, str | None]:
    """The tensor holding the class scores, and the output of the ZipMap it was found behind (if so)."""
    import onnx

    producers = {out: node for node in graph.node for out in node.output}
    zipmapped = []
    for output in graph.output:
        node = producers.get(output.name)
        if node is not None and node.op_type == _ZIPMAP:
            zipmapped.append((node.input[0], output.name))
    if len(zipmapped) == 1:
        (scores, zipmap_output), typed = zipmapped[0], {v.name: v for v in (*graph.value_info, *graph.output)}
        found = typed.get(scores)
        if found is None:  # a converter does not record the type of an inner tensor: FP32 [N, C] by ZipMap's contract
            found = onnx.helper.make_tensor_value_info(scores, onnx.TensorProto.FLOAT, [None, None])
        return found, zipmap_output
    candidates = [o for o in graph.output if _is_float_matrix(o)]
    if len(candidates) == 1:
        return candidates[0], None
    if not candidates:
        names = ", ".join(repr(o.name) for o in graph.output)
        raise ModelRefused(
            f"no output holds class scores as a float matrix [N, C] (outputs: {names}); only classifiers are imported"
        )
    named = [o for o in candidates if o.name in (OUTPUT_NAME, "probabilities", "output_probability")]
    if len(named) == 1:
        return named[0], None
    names = ", ".join(repr(o.name) for o in candidates)
    raise ModelRefused(f"several outputs could hold the class scores ({names}); export the model with one")


def _score_kind(name: str, through_zipmap: bool, scores: Scores) -> Literal["logits", "probabilities"]:
    if scores != "auto":
        return scores
    if through_zipmap or any(word in name.lower() for word in _PROBABILITY_WORDS):
        return "probabilities"
    return "logits"


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove the nodes none of whose outputs is used any more (the ZipMap, a label's ArgMax and what only
    they needed), then the initializers nothing reads."""
    while True:
        used = set(_names_read(graph)) | {o.name for o in graph.output}
        keep = [node for node in graph.node if any(out in used for out in node.output if out)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    used = set(_names_read(graph)) | {i.name for i in graph.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Call the tensor `old` `new` wherever the graph's own nodes write or read it (not in subgraphs)."""
    for node in graph.node:
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                if name == old:
                    names[i] = new


def _names_read(graph: onnx.GraphProto) -> Iterator[str]:
    """Every tensor name a node reads, in subgraphs too (they may read the outer graph's tensors)."""
    import onnx

    for node in graph.node:
        yield from (name for name in node.input if name)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _names_read(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    yield from _names_read(sub)
