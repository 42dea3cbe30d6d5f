"""Loading examples: built-in sets, CSV and NPZ through the artifact store, image folders."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gallery_common.artifacts import FileArtifactStore
from gallery_trainer.data import DataError, load_dataset
from gallery_trainer.spec import DataSpec

CSV = "width,height,colour,kind\n1.0,2.0,0.5,cat\n1.5,2.5,0.1,dog\n0.9,1.9,0.4,cat\n3.0,1.0,0.3,bird\n"


@pytest.fixture
def store(tmp_path: Path) -> FileArtifactStore:
    return FileArtifactStore((tmp_path / "artifacts").as_uri())


def test_builtin_digits_are_flat_8x8_images_with_a_stable_fingerprint() -> None:
    spec = DataSpec(source="builtin", name="digits")
    first, second = load_dataset(spec), load_dataset(spec)
    assert first.x.shape == (1797, 64) and first.x.dtype == np.float32
    assert first.image_shape == (1, 8, 8)
    assert first.class_names == [str(d) for d in range(10)]
    assert first.fingerprint == second.fingerprint
    assert first.fingerprint != load_dataset(DataSpec(source="builtin", name="iris")).fingerprint


def test_csv_from_the_store_with_text_labels(store: FileArtifactStore) -> None:
    ref = store.put("data/pets.csv", CSV.encode())
    dataset = load_dataset(DataSpec(source="csv", uri=ref.uri, sha256=ref.sha256, target="kind"), store)
    assert dataset.feature_names == ["width", "height", "colour"]
    assert dataset.class_names == ["bird", "cat", "dog"]
    assert dataset.y.tolist() == [1, 2, 1, 0]
    np.testing.assert_allclose(dataset.x[1], [1.5, 2.5, 0.1])


def test_the_same_bytes_with_another_target_are_another_data_set(store: FileArtifactStore) -> None:
    ref = store.put("data/numbers.csv", b"a,b,c\n1,2,3\n4,5,6\n7,8,9.5\n")
    by_c = load_dataset(DataSpec(source="csv", uri=ref.uri, sha256=ref.sha256, task="regression"), store)
    by_b = load_dataset(DataSpec(source="csv", uri=ref.uri, sha256=ref.sha256, target="b", task="regression"), store)
    assert by_c.fingerprint != by_b.fingerprint
    assert by_c.class_names is None and by_c.y.tolist() == [3.0, 6.0, 9.5]
    assert by_b.feature_names == ["a", "c"]


def test_csv_whose_bytes_do_not_match_the_sha256_is_refused(store: FileArtifactStore) -> None:
    ref = store.put("data/pets.csv", CSV.encode())
    with pytest.raises(DataError, match=r"data\.uri"):
        load_dataset(DataSpec(source="csv", uri=ref.uri, sha256="a" * 64, target="kind"), store)


def test_csv_problems_name_the_line_and_column(store: FileArtifactStore) -> None:
    ref = store.put("data/bad.csv", b"a,b,y\n1,2,0\n1,oops,1\n")
    with pytest.raises(DataError, match=r"CSV line 3, column 'b': 'oops' is not a number"):
        load_dataset(DataSpec(source="csv", uri=ref.uri, sha256=ref.sha256), store)
    with pytest.raises(DataError, match=r"data\.target: no column 'label'"):
        load_dataset(DataSpec(source="csv", uri=ref.uri, sha256=ref.sha256, target="label"), store)


def test_a_local_file_uri_works_without_a_store(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "pets.csv"
    path.write_text(CSV)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    dataset = load_dataset(DataSpec(source="csv", uri=path.as_uri(), sha256=digest))
    assert len(dataset.x) == 4


def test_npz_images_keep_their_shape(store: FileArtifactStore) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.random.default_rng(0).random((6, 4, 5)), y=np.array([0, 1, 0, 1, 2, 2]))
    ref = store.put("data/pics.npz", buffer.getvalue())
    dataset = load_dataset(DataSpec(source="npz", uri=ref.uri, sha256=ref.sha256), store)
    assert dataset.x.shape == (6, 20) and dataset.image_shape == (1, 4, 5)
    assert dataset.n_classes == 3


def test_npz_with_object_arrays_is_refused(store: FileArtifactStore) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.array([[1.0], [2.0]]), y=np.array([{"a": 1}, {"b": 2}], dtype=object))
    ref = store.put("data/pickled.npz", buffer.getvalue())
    with pytest.raises(DataError, match="object arrays are refused"):
        load_dataset(DataSpec(source="npz", uri=ref.uri, sha256=ref.sha256), store)


def _write_png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 6, 3), value, dtype=np.uint8)).save(path)


def test_image_folder_classes_are_subfolders(tmp_path: Path) -> None:
    _write_png(tmp_path / "pics" / "light" / "a.png", 250)
    _write_png(tmp_path / "pics" / "light" / "b.png", 240)
    _write_png(tmp_path / "pics" / "dark" / "c.png", 10)
    (tmp_path / "pics" / "dark" / "notes.txt").write_text("not a picture")
    spec = DataSpec(source="images", path=str(tmp_path / "pics"), image_size=(4, 3))
    dataset = load_dataset(spec)
    assert dataset.class_names == ["dark", "light"]
    assert dataset.y.tolist() == [0, 1, 1]
    assert dataset.image_shape == (3, 4, 3) and dataset.x.shape == (3, 36)
    assert dataset.x[0].max() < 0.1 and dataset.x[1].min() > 0.9  # scaled to [0, 1]


def test_image_folder_in_the_store(tmp_path: Path, store: FileArtifactStore) -> None:
    for cls, value in (("a", 0), ("b", 255)):
        _write_png(tmp_path / f"{cls}.png", value)
        store.put(f"datasets/shapes/{cls}/1.png", (tmp_path / f"{cls}.png").read_bytes())
    spec = DataSpec(source="images", uri=store.uri_for("datasets/shapes"), image_size=(2, 2), grayscale=True)
    dataset = load_dataset(spec, store)
    assert dataset.class_names == ["a", "b"] and dataset.image_shape == (1, 2, 2)


def test_image_shape_must_match_the_features() -> None:
    with pytest.raises(DataError, match=r"data\.image_shape"):
        load_dataset(DataSpec(source="builtin", name="iris", image_shape=(1, 3, 3)))
