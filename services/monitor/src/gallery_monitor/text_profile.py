"""What the monitor measures of one text: its length in tokens and characters and its tokens, read the way
a text model's vectorizer reads it (lowercase, then split on spaces: ONNX `StringNormalizer` LOWER and
`StringSplit` without a delimiter).

A text model takes raw strings (a `BYTES` tensor over OIP; a unicode array in its split files), so its
drift is measured on the texts themselves. Samples arrive on the hot path, so each text is reduced at once
to two lengths and an int64 array of token hashes (Python's `hash` of each token: salted per process, which
is fine because the training reference is hashed in the same process). Eight bytes per token keep a window
small whatever the tokens are, and counting a window against the reference's vocabulary is one
`searchsorted`.

Hostile or odd texts never stop a sample: an empty text has no tokens; a text whose bytes are not UTF-8
(or that carries U+FFFD, the mark a lenient decoder leaves where bytes were not UTF-8) is read with
replacement characters and counted; a huge text is read only up to `TextLimits.max_tokens` tokens
(`chars_read_per_token` characters each at most), its character length still counted in full.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

REPLACEMENT = "\ufffd"
EMPTY_HASHES = np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class TextLimits:
    """How much of each text is read, and how many training tokens the token distribution follows."""

    max_tokens: int = 256
    top_tokens: int = 200
    chars_read_per_token: int = 64

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.top_tokens < 1:
            raise ValueError(f"top_tokens must be at least 1, got {self.top_tokens}")
        if self.chars_read_per_token < 1:
            raise ValueError(f"chars_read_per_token must be at least 1, got {self.chars_read_per_token}")

    @property
    def max_chars_read(self) -> int:
        return self.max_tokens * self.chars_read_per_token


@dataclass(frozen=True)
class TextMeasure:
    """One text: tokens read (at most `max_tokens`), characters, its token hashes, and what was odd about it."""

    tokens: int
    chars: int
    hashes: np.ndarray  # int64 [tokens]
    undecodable: bool
    truncated: bool


def as_text(value: object) -> tuple[str, bool]:
    """The text of a `str` or `bytes` value and whether its bytes were not valid UTF-8.

    A `str` that holds U+FFFD or a lone surrogate (bytes some decoder could not read) counts as not
    UTF-8 too; anything else is not a text (TypeError).
    """
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8"), False
        except UnicodeDecodeError:
            return raw.decode("utf-8", "replace"), True
    if isinstance(value, str):
        if REPLACEMENT in value:
            return value, True
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "replace").decode("utf-8"), True
        return value, False
    raise TypeError(f"a text must be str or bytes, got {type(value).__name__}")


def tokens_of(text: str, limits: TextLimits) -> tuple[list[str], bool]:
    """The text's first `max_tokens` tokens, lowercased and split on runs of spaces, and whether more were left.

    Spaces only, as ONNX Runtime's `StringSplit` without a delimiter splits: a tab, a newline or a
    no-break space stays inside its token there, so it does here.
    """
    head = text[: limits.max_chars_read]
    tokens = [t for t in head.lower().split(" ") if t]
    truncated = len(head) < len(text)
    if len(tokens) > limits.max_tokens:
        tokens, truncated = tokens[: limits.max_tokens], True
    return tokens, truncated


def token_hashes(tokens: Iterable[str]) -> np.ndarray:
    return np.fromiter((hash(t) for t in tokens), dtype=np.int64)


def measure(value: object, limits: TextLimits) -> TextMeasure:
    """Reduce one text (str or bytes) to what drift compares; TypeError when it is not a text."""
    text, undecodable = as_text(value)
    tokens, truncated = tokens_of(text, limits)
    hashes = token_hashes(tokens) if tokens else EMPTY_HASHES
    return TextMeasure(len(tokens), len(text), hashes, undecodable, truncated)
