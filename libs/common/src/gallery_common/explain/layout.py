"""How one input row is laid out: its shape as the model takes it, whether it is a picture, the names of
its features, and the groups of features an explanation attributes to (each feature of a table; square
patches of a picture, each patch covering every channel).

Read from a version's signature and the spec the trainer stored beside it (`spec` artifact, JSON), so
the Gallery's Try it, the gate and the model server all see one layout. Needs only numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# the built-in data sets whose flat features are pictures ([channels, height, width]), as the trainer reads them
BUILTIN_IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {"digits": (1, 8, 8)}
# a picture is explained in about this many patches per side (8x8 -> 2x2 patches, 28x28 -> 7x7)
PATCHES_PER_SIDE = 4


def row_shape(signature_shape: Sequence[int] | None, features: int) -> list[int]:
    """One row's input shape from a signature's input shape ([-1, ...]) when it holds `features` values,
    else [features]."""
    dims = list(signature_shape or [])[1:]
    if dims and all(d > 0 for d in dims) and int(np.prod(dims)) == features:
        return dims
    return [features]


def image_shape(shape: Sequence[int], spec: Mapping[str, Any] | None, features: int) -> list[int] | None:
    """[channels, height, width] when a row is a picture: an image-shaped signature, else what the trainer
    recorded in the version's spec (`architecture.image_shape`, or the job's `data.image_shape`, or a
    built-in picture data set)."""
    if len(shape) == 3 and shape[0] in (1, 3, 4):
        return list(shape)
    stored = _mapping(spec)
    data = _mapping(_mapping(stored.get("job")).get("data")) or _mapping(stored.get("data"))
    declared = _mapping(stored.get("architecture")).get("image_shape") or data.get("image_shape")
    if not declared and data.get("source") == "builtin":
        declared = BUILTIN_IMAGE_SHAPES.get(str(data.get("name")))
    if (
        isinstance(declared, list | tuple)
        and len(declared) == 3
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in declared)
        and int(np.prod(declared)) == features
    ):
        return [int(d) for d in declared]
    return None


def _mapping(value: Any) -> Mapping[str, Any]:
    """`value` when it is a mapping, else an empty one: a spec is read as found, whatever its shape."""
    return value if isinstance(value, Mapping) else {}


def feature_names(spec: Mapping[str, Any] | None, features: int) -> list[str] | None:
    """The training data's column names, as the trainer recorded them, when there is one per feature."""
    names = _mapping(spec).get("feature_names")
    if isinstance(names, list) and len(names) == features and all(isinstance(n, str) for n in names):
        return names
    return None


@dataclass(frozen=True)
class InputLayout:
    """One row: `features` values in `shape`; a picture when `image_shape` ([C, H, W]) is set."""

    features: int
    shape: tuple[int, ...]
    image_shape: tuple[int, int, int] | None = None
    feature_names: tuple[str, ...] | None = None

    @classmethod
    def of(
        cls, features: int, signature_shape: Sequence[int] | None = None, spec: Mapping[str, Any] | None = None
    ) -> InputLayout:
        shape = row_shape(signature_shape, features)
        picture = image_shape(shape, spec, features)
        names = feature_names(spec, features)
        return cls(
            features,
            tuple(shape),
            None if picture is None else (picture[0], picture[1], picture[2]),
            None if names is None else tuple(names),
        )

    def groups(self, patch: int | None = None) -> FeatureGroups:
        """Each feature alone for a table; `patch` x `patch` squares (default: about PATCHES_PER_SIDE per
        side) across every channel for a picture."""
        if self.image_shape is None:
            return FeatureGroups(np.arange(self.features), [self.feature_name(i) for i in range(self.features)])
        channels, height, width = self.image_shape
        side = patch or max(1, math.ceil(max(height, width) / PATCHES_PER_SIDE))
        rows, cols = math.ceil(height / side), math.ceil(width / side)
        cell = (np.arange(height)[:, None] // side) * cols + (np.arange(width)[None, :] // side)
        labels = np.broadcast_to(cell, (channels, height, width)).reshape(-1)
        names = [
            f"patch ({r * side}:{min(height, (r + 1) * side)}, {c * side}:{min(width, (c + 1) * side)})"
            for r in range(rows)
            for c in range(cols)
        ]
        return FeatureGroups(np.ascontiguousarray(labels), names, side)

    def feature_name(self, index: int) -> str:
        return self.feature_names[index] if self.feature_names else f"feature {index}"


@dataclass(frozen=True)
class FeatureGroups:
    """`labels[i]` is the group of flat feature i; an explanation gives one attribution per group."""

    labels: np.ndarray
    names: list[str]
    patch: int | None = None

    @property
    def count(self) -> int:
        return len(self.names)

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.count)

    def compose(self, keep: np.ndarray, row: np.ndarray, background: np.ndarray) -> np.ndarray:
        """Rows built from `keep` ([n, groups] of 0/1): the group's features from `row` where 1, from each
        background row where 0. Returns [n, B, features] for `background` [B, features]."""
        mask = keep[:, self.labels].astype(bool)  # [n, features]
        return np.where(mask[:, None, :], row[None, None, :], background[None, :, :])

    def spread(self, per_group: np.ndarray) -> np.ndarray:
        """Per-feature values from per-group ones: each feature gets its equal share of its group's value,
        so the per-feature values add up to the same total."""
        return per_group[self.labels] / self.sizes[self.labels]
