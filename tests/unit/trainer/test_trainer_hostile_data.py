"""Hostile NPZ data for a training job (a decompression bomb, object arrays, a data set over the artifact cap)
and a tampered split in a job's workdir: each fails the job with the reason, nothing is inflated or unpickled."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hostile_artifacts import npz_bomb

from gallery_common.artifacts import FileArtifactStore
from gallery_trainer.data import DataError, load_dataset
from gallery_trainer.engine.job import SPLIT_FILES, RankError, load_split, save_split
from gallery_trainer.pipeline import TrainingFailed, prepare_job
from gallery_trainer.prepare import Split
from gallery_trainer.spec import DataSpec, parse_spec

BOMB_REASON = (
    "data: arrays 'x' and 'y' declare 3.7 GiB uncompressed, over the 1.0 GiB an NPZ file may inflate to "
    "(GALLERY_MAX_SPLIT_BYTES)"
)


@pytest.fixture
def store(tmp_path: Path) -> FileArtifactStore:
    return FileArtifactStore((tmp_path / "artifacts").as_uri())


def test_a_bomb_of_a_data_set_fails_the_job_with_the_cap(store: FileArtifactStore, tmp_path: Path) -> None:
    ref = store.put("data/bomb.npz", npz_bomb())  # 3.9 MB that inflates to 4 GB
    data = {"source": "npz", "uri": ref.uri, "sha256": ref.sha256}
    with pytest.raises(DataError) as refused:
        load_dataset(DataSpec(**data), store)  # type: ignore[arg-type]
    assert str(refused.value) == BOMB_REASON
    with pytest.raises(TrainingFailed) as failed:
        prepare_job(parse_spec({"name": "bomb", "data": data}), tmp_path / "job", store)
    assert str(failed.value) == BOMB_REASON
    assert not (tmp_path / "job" / SPLIT_FILES["train"]).exists()


def test_arrays_the_spec_does_not_name_are_never_inflated(store: FileArtifactStore) -> None:
    # a bomb under another name rides along with honest features and labels: it is not read
    rows = np.random.default_rng(0).normal(size=(30, 3))
    bomb = npz_bomb(extra={"features": rows.astype(np.float32), "label": np.arange(30) % 2})
    ref = store.put("data/mixed.npz", bomb)
    spec = DataSpec(source="npz", uri=ref.uri, sha256=ref.sha256, features="features", target="label")
    dataset = load_dataset(spec, store)
    assert dataset.x.shape == (30, 3) and dataset.class_names == ["0", "1"]


def test_a_data_set_over_the_artifact_cap_is_refused_unfetched(tmp_path: Path) -> None:
    root = (tmp_path / "artifacts").as_uri()
    buffer = io.BytesIO()
    np.savez(buffer, x=np.ones((1000, 8)), y=np.arange(1000) % 2)
    ref = FileArtifactStore(root).put("data/big.npz", buffer.getvalue())
    with pytest.raises(DataError) as refused:
        load_dataset(DataSpec(source="npz", uri=ref.uri, sha256=ref.sha256), FileArtifactStore(root, max_bytes=10_000))
    assert str(refused.value).startswith(f"data.uri: cannot read {ref.uri}: artifact {ref.uri} is ")
    assert "(GALLERY_MAX_ARTIFACT_BYTES); it was not fetched" in str(refused.value)


def test_a_tampered_split_in_the_workdir_stops_the_rank_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / SPLIT_FILES["train"]
    save_split(path, Split(np.ones((4, 2)), np.arange(4)))
    assert load_split(path).x.dtype == np.float32  # the job's own split reads back
    path.write_bytes(npz_bomb())
    with pytest.raises(RankError) as refused:
        load_split(path)
    assert str(refused.value) == (
        "train_split.npz: arrays 'x' and 'y' declare 3.7 GiB uncompressed, over the 1.0 GiB an NPZ file may "
        "inflate to (GALLERY_MAX_SPLIT_BYTES)"
    )
