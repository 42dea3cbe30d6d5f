"""Seeded texts on two topics for the monitor's text drift tests, and a tiny text classifier in standard ONNX
ops (StringNormalizer → StringSplit → TfIdfVectorizer → MatMul), the shape of model the trainer exports.

The texts are generated here, not downloaded: a few common words and one topic's words drawn with
Zipf-like weights, a length drawn from a Poisson distribution, a capital first letter and a full stop (the
punctuation stays on the token, as the model's vectorizer reads it).
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

COMMON = ["the", "a", "and", "of", "to", "in", "is", "it", "was", "for", "on", "with", "this", "that", "at", "by"]
# fmt: off
TOPICS = {
    "sport": [
        "match", "goal", "team", "coach", "season", "score", "league", "player", "striker", "referee", "win",
        "defeat", "stadium", "fans", "cup", "final", "keeper", "penalty", "midfield", "transfer", "injury",
        "training", "tactics", "derby", "champions", "title", "pitch", "whistle",
    ],
    "cooking": [
        "recipe", "oven", "flour", "butter", "sugar", "bake", "minutes", "salt", "pepper", "garlic", "onion",
        "simmer", "sauce", "dish", "kitchen", "dough", "whisk", "boil", "roast", "tomato", "cream", "lemon",
        "spoon", "pan", "chop", "slice", "grill",
    ],
}
# fmt: on
CLASSES = tuple(TOPICS)


def _weights(n: int) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1)
    return w / w.sum()


def texts(rng: np.random.Generator, n: int, topic: str = "sport", mean_words: float = 12.0) -> list[str]:
    """`n` texts on `topic`, about `mean_words` words each (at least one)."""
    words = TOPICS[topic]
    topic_p, common_p = _weights(len(words)), _weights(len(COMMON))
    out = []
    for length in np.maximum(1, rng.poisson(mean_words, n)):
        from_topic = rng.random(length) < 0.6
        chosen = [
            words[rng.choice(len(words), p=topic_p)] if t else COMMON[rng.choice(len(COMMON), p=common_p)]
            for t in from_topic
        ]
        chosen[0] = chosen[0].capitalize()
        out.append(" ".join(chosen) + ".")
    return out


def text_classifier() -> bytes:
    """`text` STRING [N] → `logits` FP32 [N, 2]: counts of each topic's words (bare or before a full stop)."""
    vocabulary = [w for topic in CLASSES for w in TOPICS[topic]]
    pool = [*vocabulary, *(w + "." for w in vocabulary)]
    indexes = list(range(len(vocabulary))) * 2  # "goal." counts as "goal"
    weights = np.zeros((len(vocabulary), len(CLASSES)), np.float32)
    for j, topic in enumerate(CLASSES):
        for w in TOPICS[topic]:
            weights[vocabulary.index(w), j] = 1.0
    nodes = [
        helper.make_node("StringNormalizer", ["text"], ["lower"], case_change_action="LOWER", locale="C.UTF-8"),
        helper.make_node("StringSplit", ["lower"], ["tokens", "counts"]),
        helper.make_node(
            "TfIdfVectorizer", ["tokens"], ["tf"], mode="TF", min_gram_length=1, max_gram_length=1,
            max_skip_count=0, ngram_counts=[0], ngram_indexes=indexes, pool_strings=pool,
        ),
        helper.make_node("MatMul", ["tf", "W"], ["logits"]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "topics",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(CLASSES)])],
        initializer=[numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10  # ORT-OpenVINO refuses the IR version 14 that onnx 1.23's helper writes
    return model.SerializeToString()
