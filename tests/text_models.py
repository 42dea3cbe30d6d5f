"""Small text classifiers in the text-model contract, for the gate, optimizer, edge-bundle and serving tests.

A text model takes one input `text` (tensor(string) [N], one raw text per row) and answers `logits` FP32
[N, C]. Its vectorizer is inside the graph in standard ONNX ops (StringNormalizer → StringSplit →
TfIdfVectorizer, each vocabulary word also counted with its common punctuation attached), then an L2
normalisation and a linear layer fitted by least squares on a synthetic corpus, so its accuracy means
something: about 0.9 or better on held-out texts of the same corpus.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gallery_common.contracts import write_split

CLASS_NAMES = ["sports", "weather", "money"]
TOPICS = {
    "sports": ["goal", "match", "team", "coach", "score", "league", "player", "referee"],
    "weather": ["rain", "storm", "sunny", "cloud", "wind", "forecast", "snow", "temperature"],
    "money": ["bank", "price", "market", "stock", "loan", "profit", "budget", "tax"],
}
FILLER = ["the", "a", "today", "we", "saw", "big", "new", "very", "and", "in", "after", "it"]
VOCABULARY = sorted({w for words in TOPICS.values() for w in words} | set(FILLER))
DECORATIONS = ("{}", "{},", "{}.", "{};", "{}:", "{})", "{}!", "{}?", "({}", '"{}', '{}"')
INPUT = "text"
OUTPUT = "logits"
VECTOR = "word_counts"  # the TfIdfVectorizer's output inside the graph
OPSET = 21


def corpus(rows: int, seed: int, noise: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """`rows` texts (numpy unicode [N]) and their class indices (int64 [N]): each text has 3-6 words of its
    topic, some filler, and with probability `noise` per word a word of another topic; punctuation and
    capitals as people type them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASS_NAMES), size=rows).astype(np.int64)
    texts = []
    for label in labels:
        topic = TOPICS[CLASS_NAMES[label]]
        words = list(rng.choice(topic, size=rng.integers(3, 7)))
        for i, _ in enumerate(words):
            if rng.random() < noise:
                other = CLASS_NAMES[(label + rng.integers(1, len(CLASS_NAMES))) % len(CLASS_NAMES)]
                words[i] = str(rng.choice(TOPICS[other]))
        words += list(rng.choice(FILLER, size=rng.integers(1, 5)))
        rng.shuffle(words)
        words[0] = words[0].capitalize()
        words[-1] += str(rng.choice([".", "!", "?", ""]))
        if rng.random() < 0.3:
            words[1] = "(" + words[1] + ")"
        texts.append(" ".join(words))
    return np.array(texts, dtype=str), labels


def _vectorizer_nodes() -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    pool = [d.format(w) for w in VOCABULARY for d in DECORATIONS]
    indexes = [i for i, _ in enumerate(VOCABULARY) for _ in DECORATIONS]
    nodes = [
        helper.make_node(
            "StringNormalizer", [INPUT], ["lowered"], case_change_action="LOWER", locale="C.UTF-8", is_case_sensitive=0
        ),
        helper.make_node("StringSplit", ["lowered"], ["tokens", "token_counts"]),
        helper.make_node(
            "TfIdfVectorizer",
            ["tokens"],
            [VECTOR],
            mode="TF",
            min_gram_length=1,
            max_gram_length=1,
            max_skip_count=0,
            ngram_counts=[0, len(pool)],
            ngram_indexes=indexes,
            pool_strings=pool,
        ),
        # L2 normalisation: a long text and a short one on one scale
        helper.make_node("ReduceL2", [VECTOR, "last_axis"], ["norm"], keepdims=1),
        helper.make_node("Add", ["norm", "epsilon"], ["norm_safe"]),
        helper.make_node("Div", [VECTOR, "norm_safe"], ["normalised"]),
    ]
    constants = [
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"),
        numpy_helper.from_array(np.array([1e-6], dtype=np.float32), "epsilon"),
    ]
    return nodes, constants


def _model(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto], output: str, width: int) -> bytes:
    graph = helper.make_graph(
        nodes,
        "text_classifier",
        [helper.make_tensor_value_info(INPUT, TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", width])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10  # ORT-OpenVINO refuses the IR version 14 onnx 1.23's helper writes
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _features(texts: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    nodes, constants = _vectorizer_nodes()
    session = ort.InferenceSession(_model(nodes, constants, "normalised", len(VOCABULARY)))
    (out,) = session.run(["normalised"], {INPUT: texts})
    return np.asarray(out)


@dataclass(frozen=True)
class TextModel:
    """A text classifier's ONNX bytes and the texts it was fitted on."""

    onnx: bytes
    train: tuple[np.ndarray, np.ndarray]


def text_classifier(seed: int = 0, rows: int = 300, useless: bool = False) -> TextModel:
    """A text classifier fitted by least squares on `rows` texts of `corpus(seed)`; `useless` fits it to
    shuffled labels instead, so it predicts no better than chance."""
    texts, labels = corpus(rows, seed)
    fitted_to = np.random.default_rng(seed).permutation(labels) if useless else labels
    features = _features(texts)
    design = np.hstack([features, np.ones((len(features), 1), dtype=np.float32)])
    targets = np.eye(len(CLASS_NAMES), dtype=np.float32)[fitted_to] * 8 - 4  # logits of a confident classifier
    solution, *_ = np.linalg.lstsq(design, targets, rcond=1e-3)
    weights, bias = solution[:-1].astype(np.float32), solution[-1].astype(np.float32)
    nodes, constants = _vectorizer_nodes()
    nodes += [
        helper.make_node("MatMul", ["normalised", "weights"], ["scores"]),
        helper.make_node("Add", ["scores", "bias"], [OUTPUT]),
    ]
    constants += [numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")]
    return TextModel(_model(nodes, constants, OUTPUT, len(CLASS_NAMES)), (texts, labels))


def write_text_splits(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Train, validation and test splits of the corpus (texts in `x`, class indices in `y`) in `folder`."""
    paths = {}
    for offset, (name, rows) in enumerate((("train", 300), ("validation", 120), ("test", 150))):
        texts, labels = corpus(rows, seed + 100 + offset)
        paths[name] = folder / f"{name}.npz"
        write_split(paths[name], texts, labels)
    return paths


@dataclass(frozen=True)
class StoredTextModel:
    """A text model as the trainer stores one: the ONNX file, its stored spec and its safetensors weights."""

    onnx: Path
    spec: dict[str, object]
    weights: Path


def stored_text_model(folder: Path, seed: int = 0, hidden: int = 32) -> StoredTextModel:
    """A text model built the way the trainer builds one: the vectorizer (its output named `text_features`),
    then a PyTorch MLP (standardisation, `hidden` units) trained on the vectorizer's outputs for the corpus,
    exported, raised to the vectorizer's opset and joined behind it with `onnx.compose.merge_models`; with the
    stored spec (a text model's `preprocessing` names the vocabulary, not the arrays) and the weights."""
    import torch
    from onnx import compose, version_converter
    from safetensors.torch import save_file

    from gallery_common.nn import ExportedModel, build_network, export_onnx
    from gallery_common.nn.stored import stored_parts

    texts, labels = corpus(300, seed)
    features = _features(texts)
    width = features.shape[1]
    spec: dict[str, object] = {
        "job": {"model": {"architecture": "mlp", "hidden": [hidden], "activation": "relu", "dropout": 0.0}},
        "task": "classification",
        "class_names": CLASS_NAMES,
        "architecture": {"n_features": width, "n_outputs": len(CLASS_NAMES), "image_shape": None},
        "preprocessing": {
            "order": ["lower_case", "split_on_whitespace", "term_counts", "l2"],
            "vocabulary_size": width,
        },
        "target": {"mean": 0.0, "scale": 1.0},
    }
    layers, transform, target, n_outputs, _ = stored_parts(spec)
    transform.mean, transform.scale = features.mean(axis=0), features.std(axis=0) + 1e-3
    torch.manual_seed(seed)
    network = ExportedModel(build_network(layers, transform, n_outputs, None), target)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    x, y = torch.from_numpy(features), torch.from_numpy(labels)
    for _ in range(150):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(network(x), y).backward()
        optimizer.step()
    network.eval()
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(weights))
    export_onnx(network, width, folder / "network.onnx")
    numeric = version_converter.convert_version(onnx.load(str(folder / "network.onnx")), OPSET)
    numeric.ir_version = 10
    nodes, constants = _vectorizer_nodes()
    nodes.append(helper.make_node("Identity", ["normalised"], ["text_features"]))
    vectorizer = onnx.load_from_string(_model(nodes, constants, "text_features", width))
    merged = compose.merge_models(vectorizer, numeric, io_map=[("text_features", "features")])
    merged.ir_version = 10
    path = folder / "model.onnx"
    onnx.save(merged, str(path))
    return StoredTextModel(path, spec, weights)


def accuracy(model: bytes, texts: np.ndarray, labels: np.ndarray) -> float:
    """The model's accuracy on `texts`, run by ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (logits,) = session.run([OUTPUT], {INPUT: texts})
    return float((np.asarray(logits).argmax(axis=1) == labels).mean())
