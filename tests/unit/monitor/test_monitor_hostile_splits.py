"""A hostile training split (a decompression bomb, an artifact over the size cap) costs the monitor that one
reference: it says why, keeps evaluating every other version, and says the same after a restart."""

from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np
import orjson
import pytest
from hostile_artifacts import npz_bomb
from monitor_core import sqlite_monitor
from registry_fakes import InMemoryRegistry
from test_monitor_evaluator import Clock, Published

from gallery_common.artifacts import ArtifactStore, FileArtifactStore
from gallery_common.contracts import write_split
from gallery_common.events import ArtifactRef
from gallery_monitor.core import Monitor
from gallery_monitor.drift import DriftRule, Reference, evaluate_drift
from gallery_monitor.evaluator import evaluate
from gallery_monitor.references import ReferenceCache, ReferenceUnavailable, registry_split_loader

BOMB_REASON = (
    "train_split of iris:1: arrays 'x' and 'y' declare 3.7 GiB uncompressed, over the 1.0 GiB an NPZ file may "
    "inflate to (GALLERY_MAX_SPLIT_BYTES)"
)


def registry_of(splits: dict[int, ArtifactRef]) -> InMemoryRegistry:
    """The registry holding versions of iris, each with the train_split it was given."""
    registry = InMemoryRegistry()
    for version, split in splits.items():
        registry.add_version("iris", version, {"train_split": split})
    return registry


def monitor_over(store: ArtifactStore, registry: InMemoryRegistry, tmp_path: Path, name: str) -> Monitor:
    return sqlite_monitor(tmp_path / f"{name}.db", registry_split_loader(registry, store), Clock())


def ingest(monitor: Monitor, version: str, rows: np.ndarray) -> None:
    for row in rows:
        message = {"model": "iris", "version": version, "inputs": [{"shape": [1, 3], "data": row.tolist()}]}
        assert monitor.samples.ingest(orjson.dumps(message), monitor.clock())


async def test_a_bomb_of_a_training_split_costs_only_its_own_reference(tmp_path: Path) -> None:
    store = FileArtifactStore((tmp_path / "artifacts").as_uri())
    honest = tmp_path / "honest.npz"
    rng = np.random.default_rng(0)
    write_split(honest, rng.normal(size=(500, 3)), np.zeros(500, np.int64))
    registry = registry_of(
        {
            1: store.put("models/iris/1/train_split.npz", npz_bomb()),  # 3.9 MB that inflates to 4 GB
            2: store.put("models/iris/2/train_split.npz", honest),
        }
    )
    for restart in ("first", "restarted"):
        monitor = monitor_over(store, registry, tmp_path, restart)
        ingest(monitor, "1", rng.normal(size=(300, 3)))
        ingest(monitor, "2", rng.normal(size=(300, 3)))
        published = Published()
        await evaluate(monitor, published)  # no exception: the evaluator goes on
        assert published == []
        refused = await anyio.to_thread.run_sync(monitor.drift, "iris", 1, None)
        assert refused.samples == 300 and not refused.drifted
        assert refused.reasons == [f"no training reference: {BOMB_REASON}"]
        fine = await anyio.to_thread.run_sync(monitor.drift, "iris", 2, None)
        assert fine.samples == 300 and fine.features and not fine.drifted


def test_a_training_split_over_the_artifact_cap_is_refused_unfetched(tmp_path: Path) -> None:
    root = (tmp_path / "artifacts").as_uri()
    honest = tmp_path / "honest.npz"
    write_split(honest, np.ones((5000, 3)), np.zeros(5000, np.int64))  # ~100 KB
    ref = FileArtifactStore(root).put("models/iris/1/train_split.npz", honest)
    capped = FileArtifactStore(root, max_bytes=10_000)
    cache = ReferenceCache(registry_split_loader(registry_of({1: ref}), capped), max_rows=100, retry_s=30)
    with pytest.raises(ReferenceUnavailable) as refused:
        cache.get("iris", 1)
    reason = str(refused.value)
    assert reason.startswith(f"train_split of iris:1: artifact {ref.uri} is ")
    assert "over the 9.8 KiB (10000 bytes) a service fetches (GALLERY_MAX_ARTIFACT_BYTES); it was not fetched" in reason


def test_a_regressors_integer_targets_are_not_classes_its_predictions_are_compared_with(tmp_path: Path) -> None:
    """A regressor of counts (integer targets): its one output's "top class" is always 0, so compared with
    the targets as class shares every window would drift on "predicted classes". The registry says it is a
    regressor, and the monitor compares its inputs only."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(600, 3)).astype(np.float32)
    counts = rng.integers(0, 40, size=600)
    store = FileArtifactStore((tmp_path / "artifacts").as_uri())
    split = tmp_path / "train.npz"
    write_split(split, x, counts)
    ref = store.put("counts/train.npz", split)
    registry = InMemoryRegistry()
    registry.add_version("counts", 1, {"train_split": ref}, task="regression")
    registry.add_version("counts", 2, {"train_split": ref}, task="classification")
    loader = registry_split_loader(registry, store)
    window, outputs = x[:300], np.zeros(300, dtype=np.int32)  # rows like training; the one output's argmax

    regressor = loader("counts", 1)
    assert regressor.y is None
    as_regressor = Reference.from_split(regressor.x, regressor.y)
    report = evaluate_drift(as_regressor, window, outputs, DriftRule())
    assert not report.drifted and report.prediction_psi is None, report.reasons

    classifier = loader("counts", 2)
    as_classifier = Reference.from_split(classifier.x, classifier.y)
    assert any("predicted classes" in r for r in evaluate_drift(as_classifier, window, outputs, DriftRule()).reasons)
