"""Training splits read safely, and references loaded once per version (missing ones not asked for in a loop)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from gallery_monitor.references import ReferenceCache, ReferenceUnavailable, TrainingData, read_split


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def test_a_split_gives_its_features_and_labels() -> None:
    x, y = read_split(npz(x=np.ones((5, 3), np.float32), y=np.arange(5)), "split")
    assert x.shape == (5, 3) and y is not None and list(y) == [0, 1, 2, 3, 4]
    x, y = read_split(npz(x=np.ones((5, 3), np.float32)), "split")
    assert y is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not a zip file", "train_split of iris:1 is not a readable NPZ file"),
        (npz(features=np.ones(3)), "train_split of iris:1 holds no `x` array (it has features)"),
        (npz(x=np.array([{"a": 1}], dtype=object)), "train_split of iris:1 is not a readable NPZ file"),
    ],
)
def test_a_bad_split_is_refused_and_nothing_is_unpickled(data: bytes, reason: str) -> None:
    with pytest.raises(ReferenceUnavailable, match=reason.replace("(", r"\(").replace(")", r"\)")):
        read_split(data, "train_split of iris:1")


def test_references_are_loaded_once_and_a_missing_one_is_retried_only_later() -> None:
    calls: list[tuple[str, int]] = []

    def loader(model: str, version: int) -> TrainingData:
        calls.append((model, version))
        if version == 2:
            raise ReferenceUnavailable("iris:2 has no train_split artifact in the registry")
        return TrainingData(np.random.default_rng(0).normal(size=(300, 4)), np.zeros(300, np.int64))

    cache = ReferenceCache(loader, max_rows=100, retry_s=3600)
    first = cache.get("iris", 1)
    assert cache.get("iris", 1) is first and first.rows == 100 and first.features == 4  # subsampled to max_rows
    for _ in range(3):
        with pytest.raises(ReferenceUnavailable, match="no train_split artifact"):
            cache.get("iris", 2)
    assert calls == [("iris", 1), ("iris", 2)]
    impatient = ReferenceCache(loader, max_rows=100, retry_s=0.0)
    for _ in range(2):
        with pytest.raises(ReferenceUnavailable):
            impatient.get("iris", 2)
    assert calls[-2:] == [("iris", 2), ("iris", 2)]
