"""Global word importance of a text model the gate evaluated, by occlusion: for each sampled test text, each
distinct word in it is removed (every occurrence, whatever its case and the punctuation around it) and the
drop of the predicted class's probability is recorded; a word's importance is its mean drop over the
sampled texts (a text without the word counts as no drop). Kernel SHAP over k-means background rows, the
table models' method, has no meaning for one string per row.

The untrusted model runs in a sandboxed child under the evaluation's limits, as the evaluation does. The
report has the shape of the table models' `feature_importance` (`groups` of name and importance, most
important first) with `method` "word-occlusion" and no per-feature `values`; nothing here rejects a version.

Blocking (child processes, file reads): call from a worker thread.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from gallery_common.sandbox import Limits

from .evaluation import EvaluationFailed, ModelSession, OnnxModel, run_in_sandbox
from .explainer import ImportanceConfig

METHOD = "word-occlusion"
TOP_WORDS = 30  # words the report lists
MAX_WORDS_PER_TEXT = 64  # distinct words occluded per text; a longer text's later words are not
# ASCII punctuation, then dashes, ellipsis, guillemets and curly quotes
_PUNCTUATION = "\"'()[]{}<>.,;:!?-*/\\|" + "\u2013\u2014\u2026\u00ab\u00bb\u201c\u201d\u2018\u2019"


class WordImportanceFailed(Exception):
    """Word importance could not be computed; the message is the reason the report gives."""


def word_of(token: str) -> str:
    """The word a token counts as: lower case, punctuation around it stripped ("(Dog," is "dog")."""
    return token.strip(_PUNCTUATION).lower()


def occlusions(text: str) -> tuple[list[str], list[str]]:
    """The distinct words of `text` (first `MAX_WORDS_PER_TEXT`, in order) and, for each, the text with every
    token of that word removed."""
    tokens = text.split()
    words = list(dict.fromkeys(w for w in map(word_of, tokens) if w))[:MAX_WORDS_PER_TEXT]
    return words, [" ".join(t for t in tokens if word_of(t) != word) for word in words]


def sample_texts(texts: np.ndarray, config: ImportanceConfig) -> np.ndarray:
    """Up to `config.rows` texts, drawn without replacement with the configured seed, in file order."""
    if len(texts) <= config.rows:
        return np.ascontiguousarray(texts)
    picked = np.sort(np.random.default_rng(config.seed).choice(len(texts), size=config.rows, replace=False))
    return np.ascontiguousarray(texts[picked])


def word_importance(
    model: OnnxModel, texts: np.ndarray, config: ImportanceConfig, limits: Limits | None = None
) -> dict[str, Any]:
    """The `feature_importance` entry of a text model over a sample of `texts`; the `error` entry (never an
    exception) when the model cannot be explained."""
    rows = sample_texts(texts, config)
    started = time.perf_counter()
    try:
        report = _in_sandbox(model, rows, limits or Limits.from_settings())
    except WordImportanceFailed as exc:
        return {"error": str(exc)}
    report["seed"] = config.seed
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


def _in_sandbox(model: OnnxModel, rows: np.ndarray, limits: Limits) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gallery-word-importance-") as tmp:
        folder = Path(tmp)
        (folder / "model.onnx").write_bytes(model.data)
        np.save(folder / "texts.npy", rows, allow_pickle=False)
        answer = run_in_sandbox(
            _importance_in_child,
            (str(folder), model.input.name, model.output_name),
            limits,
            what="word importance",
            preload=(__name__,),
            failure=WordImportanceFailed,
            crashed="the model could not be explained",
        )
    return dict(answer["importance"])


def _importance_in_child(folder: str, input_name: str, output_name: str) -> bytes:
    """Runs in the sandbox: `{"importance": ...}` as JSON, or `{"error": reason}`."""
    here = Path(folder)
    texts = np.load(here / "texts.npy", allow_pickle=False)
    try:
        session = ModelSession(
            (here / "model.onnx").read_bytes(), input_name, -1, output_name, rows="the texts with a word removed"
        )
        found = _occlude(session, texts)
    except EvaluationFailed as exc:
        return json.dumps({"error": str(exc)}).encode()
    return json.dumps({"importance": found}).encode()


def _probabilities(logits: np.ndarray) -> np.ndarray:
    wide = logits.astype(np.float64).reshape(len(logits), -1)
    shifted = np.exp(wide - wide.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _occlude(session: ModelSession, texts: np.ndarray) -> dict[str, Any]:
    base = _probabilities(session.predict(texts))
    if base.shape[1] < 2:
        raise EvaluationFailed("word importance needs a classifier's logits [N, C] with C >= 2")
    predicted = base.argmax(axis=1)
    owners: list[int] = []
    names: list[str] = []
    variants: list[str] = []
    for row, text in enumerate(texts.tolist()):
        words, occluded = occlusions(text)
        owners += [row] * len(words)
        names += words
        variants += occluded
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    if variants:
        changed = _probabilities(session.predict(np.array(variants, dtype=str)))
        owner = np.array(owners)
        drops = base[owner, predicted[owner]] - changed[np.arange(len(owner)), predicted[owner]]
        for word, drop in zip(names, drops.tolist(), strict=True):
            totals[word] = totals.get(word, 0.0) + drop
            counts[word] = counts.get(word, 0) + 1
    if not all(math.isfinite(v) for v in totals.values()):
        raise EvaluationFailed("the model's outputs on the texts with a word removed are not finite")
    mean = {word: total / len(texts) for word, total in totals.items()}
    ranked = sorted((w for w in mean if mean[w] > 0), key=lambda w: (-mean[w], w))[:TOP_WORDS]
    return {
        "method": METHOD,
        "target": "predicted class",
        "rows": len(texts),
        "words": len(mean),
        "groups": [{"name": w, "index": i, "importance": mean[w], "texts": counts[w]} for i, w in enumerate(ranked)],
        "values": None,
    }
