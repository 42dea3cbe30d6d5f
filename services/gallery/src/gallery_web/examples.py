"""Held-out examples for Try it: rows of a version's `test_split`, read from the artifact store through
the one NPZ reader (`gallery_common.contracts.splits`: capped, nothing unpickled).

Blocking (artifact store, decompression): call from a worker thread. The rows picked are the same on
every call (the first rows of each class in turn), so a page shows the same examples after a reload.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
from pydantic import BaseModel

from gallery_common.artifacts import ArtifactStore
from gallery_common.contracts import ArtifactRole, NpzRefused, VersionPublic, read_split
from gallery_common.errors import GalleryError, InvalidRequest, NotFound
from gallery_common.explain.layout import InputLayout

TEST_SPLIT = "test_split"
MAX_SPEC_BYTES = 1024 * 1024


class Example(BaseModel):
    index: int
    input: Any  # nested list, in `shape`; a text model's: the text
    label: int | float | str | None


class ExamplesView(BaseModel):
    model: str
    version: int
    shape: list[int]  # one row's input shape, as the model takes it (its signature, or [features]; [] for a text)
    text: bool = False  # the model takes raw texts (a text split): each example's input is one string
    image: bool
    image_shape: list[int] | None  # [channels, height, width] of a picture, to draw a row
    class_names: list[str] | None
    feature_names: list[str] | None  # one per feature, to label a table's fields
    rows: int  # rows in the test split
    examples: list[Example]


def pick_rows(y: np.ndarray | None, rows: int, n: int) -> list[int]:
    """`n` row indices: for class labels the first row of each class in turn, else evenly spread rows."""
    n = min(n, rows)
    if y is not None and y.ndim == 1 and y.dtype.kind in "iu":
        ranks: dict[int, int] = {}
        keyed = []
        for index, label in enumerate(y.tolist()):
            rank = ranks.get(label, 0)
            ranks[label] = rank + 1
            if rank < n:
                keyed.append((rank, label, index))
        return [index for _, _, index in sorted(keyed)[:n]]
    return sorted({int(i) for i in np.linspace(0, rows - 1, num=n)}) if n else []


class ExampleReader:
    """Reads examples from versions' test splits; keeps the answers of the last few versions asked."""

    def __init__(self, store: ArtifactStore, *, max_split_bytes: int, keep: int = 16) -> None:
        self.store = store
        self.max_split_bytes = max_split_bytes
        self.keep = keep
        self._cache: OrderedDict[tuple[str, str, int], ExamplesView] = OrderedDict()
        self._lock = threading.Lock()

    def _spec(self, version: VersionPublic) -> dict[str, Any] | None:
        found = version.artifacts.get(ArtifactRole.spec)
        if found is None or (found.size is not None and found.size > MAX_SPEC_BYTES):
            return None
        try:
            doc = json.loads(self.store.get(found.uri, found.sha256))
        except (GalleryError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def examples(self, version: VersionPublic, n: int) -> ExamplesView:
        split = version.artifact(TEST_SPLIT)
        what = f"{version.name}:{version.version}"
        if split is None:
            raise NotFound(f"{what} has no {TEST_SPLIT} artifact in the registry")
        key = (split.uri, split.sha256, n)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        data = self.store.get(split.uri, split.sha256)
        try:
            read = read_split(data, name=f"{TEST_SPLIT} of {what}", max_bytes=self.max_split_bytes)
        except NpzRefused as exc:
            raise InvalidRequest(str(exc)) from exc
        x, y = read.x, read.y
        if read.is_text:
            view = ExamplesView(
                model=version.name,
                version=version.version,
                shape=[],
                text=True,
                image=False,
                image_shape=None,
                class_names=version.class_names,
                feature_names=None,
                rows=len(x),
                examples=[
                    Example(index=i, input=str(x[i]), label=y[i].item() if y.ndim == 1 else None)
                    for i in pick_rows(y, len(x), n)
                ],
            )
            return self._keep(key, view)
        features = int(x.shape[1])
        signature = version.signature.inputs[0].shape if version.signature and version.signature.inputs else None
        layout = InputLayout.of(features, signature, self._spec(version))
        shape = list(layout.shape)
        examples = []
        for index in pick_rows(y, len(x), n):
            label = y[index].item() if y.ndim == 1 else None
            examples.append(Example(index=index, input=x[index].reshape(shape).tolist(), label=label))
        view = ExamplesView(
            model=version.name,
            version=version.version,
            shape=shape,
            image=layout.image_shape is not None,
            image_shape=None if layout.image_shape is None else list(layout.image_shape),
            class_names=version.class_names,
            feature_names=None if layout.feature_names is None else list(layout.feature_names),
            rows=len(x),
            examples=examples,
        )
        return self._keep(key, view)

    def _keep(self, key: tuple[str, str, int], view: ExamplesView) -> ExamplesView:
        with self._lock:
            self._cache[key] = view
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        return view
