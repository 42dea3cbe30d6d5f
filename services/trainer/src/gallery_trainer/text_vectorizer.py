"""A bag-of-words vectorizer fitted on the training texts and written as standard ONNX operators.

The graph takes `text` (tensor(string) [N], one raw text per row) and gives `text_features` FP32 [N, V]:

    StringNormalizer (lower case) -> StringSplit (on spaces, then line breaks, tabs...) -> TfIdfVectorizer (term counts)
    -> times the idf weights (optional) -> divided by the row's L2 norm

ONNX Runtime's CPU provider runs every one of these, so a served text model needs no custom operators.
StringSplit leaves punctuation on its tokens ("dog," "(dog"), so the vocabulary's pool holds each word
with its common one-character decorations, all counted for the word (TfIdfVectorizer lets several pool
strings share an output column). A token counts for word `w` exactly when `token_core(token) == w`; the
fitting below reads tokens through the same function, so what was fitted is what the graph counts.

The training features come from running this same graph in ONNX Runtime (`TextVectorizer.features`), so
training and serving cannot disagree on what a text's features are.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gallery_common.contracts import names

TEXT_INPUT = names.TEXT_INPUT
FEATURES_OUTPUT = "text_features"
# StringSplit is in the default domain from opset 20; ONNX Runtime 1.20+ runs opset 21
TEXT_OPSET = 21
# ONNX Runtime's OpenVINO build refuses newer IR versions than 10
TEXT_IR_VERSION = 10
LOCALE = names.TEXT_LOCALE
PREFIXES = ("(", '"', "'", "[")
SUFFIXES = ("),", ").", ");", '",', '".', ",", ".", ";", ":", ")", "!", "?", '"', "'", "]")
NORM_FLOOR = 1e-12
# what separates words: the space first (StringSplit's default), then line breaks, tabs and the no-break space
SEPARATORS = (" ", "\n", "\r", "\t", "\xa0")
_SEPARATOR_PATTERN = "[" + "".join(SEPARATORS) + "]"


def token_core(token: str) -> str:
    """The word a lower-cased token counts for: one leading and one trailing decoration removed
    (`(dog),` -> `dog`); the token itself when removing them would leave nothing."""
    core = token
    for prefix in PREFIXES:
        if core.startswith(prefix) and len(core) > len(prefix):
            core = core[len(prefix) :]
            break
    for suffix in SUFFIXES:
        if core.endswith(suffix) and len(core) > len(suffix):
            core = core[: -len(suffix)]
            break
    return core


def words(text: str) -> list[str]:
    """A text's words as the graph sees them: lower case, split on `SEPARATORS`, decorations removed."""
    return [token_core(token) for token in re.split(_SEPARATOR_PATTERN, text.lower()) if token]


def _split_nodes(text: str, tokens: str) -> list[onnx.NodeProto]:
    """Nodes that split [N] texts into [N, T] tokens on every separator, padded with "" (which counts for
    nothing): StringSplit without a delimiter splits on spaces only (runs of them as one), so each other
    separator splits the tokens again, and the extra axis is folded back into the tokens' axis."""
    nodes = [helper.make_node("StringSplit", [text], ["split_0", "split_0_counts"])]
    current = "split_0"
    for i, separator in enumerate(SEPARATORS[1:], start=1):
        nodes += [
            helper.make_node("StringSplit", [current], [f"split_{i}_3d", f"split_{i}_counts"], delimiter=separator),
            helper.make_node("Reshape", [f"split_{i}_3d", "token_shape"], [f"split_{i}"]),
        ]
        current = f"split_{i}"
    nodes.append(helper.make_node("Identity", [current], [tokens]))
    return nodes


def decorated_forms(word: str) -> list[str]:
    """Every token the graph counts for `word`: the word with each decoration (and none) around it."""
    forms = [p + word + s for p in ("", *PREFIXES) for s in ("", *SUFFIXES)]
    return [form for form in forms if token_core(form) == word]


@dataclass(frozen=True)
class VectorizerSettings:
    """How the vocabulary is chosen: the `max_words` most frequent by document frequency, each in at least
    `min_documents` training texts; `idf` weights rare words up (log((1 + n) / (1 + df)) + 1)."""

    max_words: int = 5000
    min_documents: int = 2
    idf: bool = True


@dataclass(frozen=True, eq=False)
class TextVectorizer:
    """A fitted vocabulary (column order) and its idf weights."""

    vocabulary: tuple[str, ...]
    idf: np.ndarray | None

    @property
    def n_features(self) -> int:
        return len(self.vocabulary)

    def to_onnx(self) -> onnx.ModelProto:
        """The vectorizer as one ONNX model: `text` [N] strings in, `text_features` FP32 [N, V] out."""
        return self._graph

    @functools.cached_property
    def _graph(self) -> onnx.ModelProto:
        pool: dict[str, int] = {}
        for column, word in enumerate(self.vocabulary):
            for form in decorated_forms(word):
                pool.setdefault(form, column)
        strings = sorted(pool)
        counts = "term_counts"
        nodes = [
            helper.make_node("StringNormalizer", [TEXT_INPUT], ["lowered"], case_change_action="LOWER", locale=LOCALE),
            *_split_nodes("lowered", "tokens"),
            helper.make_node(
                "TfIdfVectorizer",
                ["tokens"],
                [counts],
                mode="TF",
                min_gram_length=1,
                max_gram_length=1,
                max_skip_count=0,
                ngram_counts=[0, len(strings)],
                ngram_indexes=[pool[s] for s in strings],
                pool_strings=strings,
            ),
        ]
        initializers = [
            numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "token_shape"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "norm_axes"),
            numpy_helper.from_array(np.array(NORM_FLOOR, dtype=np.float32), "norm_floor"),
        ]
        weighted = counts
        if self.idf is not None:
            initializers.append(numpy_helper.from_array(self.idf.astype(np.float32), "idf"))
            nodes.append(helper.make_node("Mul", [counts, "idf"], ["weighted"]))
            weighted = "weighted"
        nodes += [
            helper.make_node("ReduceL2", [weighted, "norm_axes"], ["norm"], keepdims=1),
            helper.make_node("Max", ["norm", "norm_floor"], ["safe_norm"]),
            helper.make_node("Div", [weighted, "safe_norm"], [FEATURES_OUTPUT]),
        ]
        graph = helper.make_graph(
            nodes,
            "text_vectorizer",
            [helper.make_tensor_value_info(TEXT_INPUT, TensorProto.STRING, ["batch"])],
            [helper.make_tensor_value_info(FEATURES_OUTPUT, TensorProto.FLOAT, ["batch", self.n_features])],
            initializer=initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", TEXT_OPSET)])
        model.ir_version = TEXT_IR_VERSION
        onnx.checker.check_model(model)
        return model

    def features(self, texts: Sequence[str] | np.ndarray) -> np.ndarray:
        """FP32 [N, V] features of `texts`, computed by the ONNX graph itself in ONNX Runtime."""
        return graph_features(self.to_onnx(), texts)

    def arrays(self) -> dict[str, object]:
        """What the stored spec records of the vectorizer."""
        return {
            "vocabulary_size": self.n_features,
            "idf": self.idf is not None,
            "locale": LOCALE,
            "vocabulary": list(self.vocabulary),
        }


def graph_features(vectorizer: onnx.ModelProto, texts: Sequence[str] | np.ndarray, batch: int = 4096) -> np.ndarray:
    """Run a vectorizer graph (`text` in, `text_features` out) in ONNX Runtime on the CPU, `batch` texts at a
    time; FP32 [N, V]."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(vectorizer.SerializeToString(), options, providers=["CPUExecutionProvider"])
    width = session.get_outputs()[0].shape[1]
    rows = np.asarray(texts, dtype=str).reshape(-1)
    out = np.zeros((len(rows), width), dtype=np.float32)  # no rows: nothing to run (StringNormalizer refuses them)
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        out[start : start + len(chunk)] = session.run([FEATURES_OUTPUT], {TEXT_INPUT: chunk})[0]
    return out


def fit_vectorizer(texts: Sequence[str] | np.ndarray, settings: VectorizerSettings) -> TextVectorizer:
    """Choose the vocabulary (and idf weights) from the training texts only.

    Words are ranked by how many texts hold them, ties in alphabetical order, so a fit is reproducible.
    ValueError (naming the setting) when no word reaches `min_documents`.
    """
    documents = Counter(word for text in texts for word in set(words(str(text))))
    kept = [(word, n) for word, n in documents.items() if n >= settings.min_documents]
    if not kept:
        raise ValueError(
            f"preparation.text.min_documents: no word appears in {settings.min_documents} or more training texts"
        )
    kept.sort(key=lambda item: (-item[1], item[0]))
    chosen = kept[: settings.max_words]
    idf = None
    if settings.idf:
        n = len(texts)
        idf = np.array([math.log((1 + n) / (1 + df)) + 1 for _, df in chosen], dtype=np.float32)
    return TextVectorizer(vocabulary=tuple(word for word, _ in chosen), idf=idf)
