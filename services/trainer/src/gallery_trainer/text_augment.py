"""Text augmentation as in EDA (Wei & Zou, 2019, "Easy Data Augmentation Techniques for Boosting Performance
on Text Classification Tasks"): synonym replacement from WordNet, random insertion, random swap and random
deletion. Applied once, seeded, to the training split's texts at preparation; validation and test texts
are never altered.

Words are a text's whitespace-separated tokens. A replaced or inserted word keeps the punctuation around
the word it stands for ("dog," -> "hound,"). Function words (the, of, ...) are never replaced or used as
insertion sources, as in EDA. An operation that would leave a text empty, or finds nothing to do, gives
the text back unchanged, and unchanged copies are not added.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np

from gallery_trainer.spec import TextAugmentation
from gallery_trainer.text_vectorizer import token_core
from gallery_trainer.wordnet import synonyms

# EDA's stop words, the common English function words
_FUNCTION_WORDS = """
a about above after again against all am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her
here hers him his how i if in into is it its itself just me more most my no nor not now of off on once only
or other our out over own same she should so some such than that the their them then there these they this
those through to too under until up very was we were what when where which while who whom why will with
would you your
"""
STOP_WORDS = frozenset(_FUNCTION_WORDS.split())

Operation = Callable[[list[str], float, random.Random], list[str]]


def _replaceable(token: str) -> bool:
    core = token_core(token.lower())
    return core not in STOP_WORDS and bool(synonyms(core))


def _with_synonym(token: str, rng: random.Random) -> str:
    """`token` with its word replaced by a random WordNet synonym, the punctuation around it kept."""
    lowered = token.lower()
    core = token_core(lowered)
    start = lowered.find(core)
    return token[:start] + rng.choice(synonyms(core)) + token[start + len(core) :]


def _count(words: Sequence[str], share: float) -> int:
    return max(1, round(share * len(words)))


def synonym_replacement(words: list[str], share: float, rng: random.Random) -> list[str]:
    """Replace `share` of the words (at least one) that have WordNet synonyms with one of them."""
    candidates = [i for i, token in enumerate(words) if _replaceable(token)]
    rng.shuffle(candidates)
    out = list(words)
    for i in candidates[: _count(words, share)]:
        out[i] = _with_synonym(words[i], rng)
    return out


def random_insertion(words: list[str], share: float, rng: random.Random) -> list[str]:
    """Insert a synonym of a random word at a random place, `share` of the length times (at least once)."""
    sources = [token_core(token.lower()) for token in words if _replaceable(token)]
    if not sources:
        return list(words)
    out = list(words)
    for _ in range(_count(words, share)):
        out.insert(rng.randrange(len(out) + 1), rng.choice(synonyms(rng.choice(sources))))
    return out


def random_swap(words: list[str], share: float, rng: random.Random) -> list[str]:
    """Swap two random words, `share` of the length times (at least once)."""
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(_count(words, share)):
        i, j = rng.sample(range(len(out)), 2)
        out[i], out[j] = out[j], out[i]
    return out


def random_deletion(words: list[str], probability: float, rng: random.Random) -> list[str]:
    """Drop each word with `probability`; the words unchanged if none would be left."""
    kept = [token for token in words if rng.random() >= probability]
    return kept or list(words)


def operations(spec: TextAugmentation) -> list[tuple[Operation, float]]:
    """The operations the spec turns on, with their strength, in a fixed order."""
    chosen: list[tuple[Operation, float]] = [
        (synonym_replacement, spec.synonyms),
        (random_insertion, spec.insert),
        (random_swap, spec.swap),
        (random_deletion, spec.delete),
    ]
    return [(operation, strength) for operation, strength in chosen if strength > 0]


def augment_texts(x: np.ndarray, y: np.ndarray, spec: TextAugmentation, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """New training rows: up to `spec.copies` altered copies of each text in `x` with its label from `y`.

    Copy k of text i is made by the operations in turn (so each is used about equally often); copies equal
    to their original are left out. The same `x`, `y`, spec and seed give the same rows.
    """
    rng = random.Random(seed)
    ops = operations(spec)
    texts: list[str] = []
    labels: list[int] = []
    for i, (text, label) in enumerate(zip(x.tolist(), y.tolist(), strict=True)):
        words = str(text).split()
        for k in range(spec.copies):
            operation, strength = ops[(i * spec.copies + k) % len(ops)]
            altered = " ".join(operation(words, strength, rng)) if words else ""
            if altered and altered != text:
                texts.append(altered)
                labels.append(int(label))
    return np.array(texts, dtype=str).reshape(-1), np.array(labels, dtype=np.int64)
