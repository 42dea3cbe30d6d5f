"""The one NPZ reader: splits round-trip, and every hostile file is refused with a reason before it costs
memory (a 4 MB file that inflates to 4 GB, zip entries that lie, object arrays, stray arrays)."""

from __future__ import annotations

import io
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hostile_artifacts import lying_npz, npz_bomb, npz_with_header_shape

from gallery_common.contracts import (
    NpzMissingArrays,
    NpzRefused,
    NpzUnreadable,
    read_features,
    read_npz,
    read_split,
    write_split,
)
from gallery_common.settings import GallerySettings, get_settings

MiB = 1024 * 1024


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


class Pickled:
    """Unpickling this would leave a file behind: proof that an object array was (or was not) loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "unpickled"))  # type: ignore[return-value]


def test_a_written_split_reads_back_as_fp32_rows_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "train_split.npz"
    write_split(path, np.arange(12, dtype=np.float64).reshape(4, 3), np.array(["a", "b", "a", "c"]))
    split = read_split(path)
    assert split.x.dtype == np.float32 and split.x.shape == (4, 3) and split.x.flags.writeable
    assert split.x[3].tolist() == [9.0, 10.0, 11.0]
    assert split.y.tolist() == ["a", "b", "a", "c"]
    assert path.exists() and not (tmp_path / "train_split.npz.npz").exists()


def test_a_text_split_reads_back_as_one_string_per_row(tmp_path: Path) -> None:
    path = tmp_path / "texts.npz"
    texts = np.array(["a small dog", "", "ein Hund, sehr groß"], dtype=object)
    write_split(path, texts, np.array([0, 1, 0]))
    split = read_split(path)
    assert split.is_text and split.x.dtype.kind == "U"
    assert split.x.tolist() == ["a small dog", "", "ein Hund, sehr groß"]
    assert read_split(npz(x=np.ones((2, 2)), y=np.zeros(2))).is_text is False
    assert read_features(path)[0].tolist() == split.x.tolist()


def test_a_text_split_with_rows_that_are_not_strings_is_not_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"only str rows \(found int\)"):
        write_split(tmp_path / "bad.npz", np.array(["a", 3], dtype=object), np.array([0, 1]))
    assert not (tmp_path / "bad.npz").exists()


def test_compressed_and_fortran_ordered_arrays_are_read_like_numpy_reads_them() -> None:
    x = np.asfortranarray(np.random.default_rng(1).normal(size=(50, 7)))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=x, y=np.arange(50))
    split = read_split(buffer.getvalue(), name="test_split")
    np.testing.assert_allclose(split.x, x.astype(np.float32))
    assert split.y.tolist() == list(range(50))


def test_a_split_without_labels_reads_as_features_only() -> None:
    x, y = read_features(npz(x=np.ones((3, 2), np.float32)), name="train_split")
    assert x.shape == (3, 2) and y is None


def test_a_4_gb_bomb_is_refused_before_anything_is_inflated() -> None:
    bomb = npz_bomb()  # 3.9 MB on disk, 4,000,000,128 bytes inflated
    assert len(bomb) < 4 * MiB
    assert get_settings().max_split_bytes == GallerySettings.model_fields["max_split_bytes"].default == 1024**3
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(NpzRefused) as refused:
            read_split(bomb, name="test_split.npz")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(refused.value) == (
        "test_split.npz: arrays 'x' and 'y' declare 3.7 GiB uncompressed, over the 1.0 GiB an NPZ file may "
        "inflate to (GALLERY_MAX_SPLIT_BYTES)"
    )
    assert time.perf_counter() - started < 1.0
    assert peak < 16 * MiB  # the bomb's own bytes are already held; nothing near 4 GB was allocated


def test_the_cap_is_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    data = npz(x=np.ones((1000, 100), np.float32), y=np.zeros(1000))  # 400 KB of x
    monkeypatch.setenv("GALLERY_MAX_SPLIT_BYTES", str(100_000))
    get_settings.cache_clear()
    try:
        with pytest.raises(NpzRefused, match=r"over the 97\.7 KiB an NPZ file may inflate to"):
            read_split(data, name="split")
    finally:
        monkeypatch.delenv("GALLERY_MAX_SPLIT_BYTES")
        get_settings.cache_clear()
    assert read_split(data, name="split").x.shape == (1000, 100)


def test_a_zip_entry_that_understates_its_size_is_refused_before_allocating() -> None:
    with pytest.raises(NpzUnreadable) as refused:
        read_split(lying_npz(), name="validation_split.npz")
    assert str(refused.value) == (
        "validation_split.npz: not a readable NPZ file: array 'x' is float32 [250000, 4] (4000000 bytes) but "
        "its zip entry holds 872"
    )


def test_a_header_claiming_a_huge_shape_is_refused_before_allocating() -> None:
    with pytest.raises(NpzRefused, match=r"array 'x' is float32 \[1000000000, 1000\]: 3725\.3 GiB of data, over"):
        read_split(npz_with_header_shape((10**9, 1000)), name="split")
    with pytest.raises(NpzUnreadable, match=r"array 'x' is float32 \[100, 100\] \(40000 bytes\) but its zip"):
        read_split(npz_with_header_shape((100, 100)), name="split")


def test_object_arrays_are_refused_and_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    data = npz(x=np.ones((1, 2)), y=np.array([Pickled(marker)], dtype=object))
    with pytest.raises(NpzUnreadable) as refused:
        read_split(data, name="train_split")
    assert "array 'y' holds Python objects; object arrays are refused" in str(refused.value)
    assert not marker.exists()
    with pytest.raises(NpzUnreadable, match="object arrays are refused"):
        read_npz(data, wanted=["y"], name="data")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (npz(features=np.ones((2, 2))), "split: a split needs arrays 'x' and 'y', found ['features']"),
        (npz(x=np.ones((2, 2))), "split: a split needs arrays 'x' and 'y', found ['x']"),
        (
            npz(x=np.ones((2, 2)), y=np.zeros(2), extra=np.zeros(10)),
            "split: a split holds only 'x' and 'y'; unexpected array(s) ['extra']",
        ),
        (b"PK\x03\x04 not really", "split: not a readable NPZ file: not a zip archive (File is not a zip file)"),
        (npz(x=np.ones(3), y=np.zeros(3)), "split: x must be numeric [N, F] or texts (unicode [N]), got float64 [3]"),
        (
            npz(x=np.array([["a"]]), y=np.zeros(1)),
            "split: x must be numeric [N, F] or texts (unicode [N]), got <U1 [1, 1]",
        ),
        (npz(x=np.ones((3, 2)), y=np.zeros(4)), "split: x has 3 rows but y has 4"),
        (npz(x=np.ones((0, 2)), y=np.zeros(0)), "split: the split holds no rows"),
    ],
    ids=["no-x", "no-y", "stray-array", "not-a-zip", "x-not-a-table", "x-text", "rows-disagree", "empty"],
)
def test_a_bad_split_is_refused_with_the_file_and_the_reason(data: bytes, message: str) -> None:
    with pytest.raises(NpzRefused) as refused:
        read_split(data, name="split")
    assert str(refused.value) == message


def test_missing_arrays_are_named_for_callers_that_phrase_their_own_message() -> None:
    with pytest.raises(NpzMissingArrays) as refused:
        read_split(npz(features=np.ones((2, 2))), name="split")
    assert refused.value.missing == ["x", "y"] and refused.value.found == ["features"]


def test_two_members_under_one_name_are_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        for value in (1.0, 2.0):
            member = io.BytesIO()
            np.save(member, np.full((2, 2), value))
            archive.writestr("x.npy", member.getvalue())
    with pytest.raises(NpzUnreadable, match=r"it holds two members named 'x\.npy'"):
        read_split(buffer.getvalue(), name="split")


def test_arrays_nobody_asked_for_are_never_inflated() -> None:
    bomb_with_features = npz_bomb(extra={"features": np.ones((3, 2), np.float32)})
    contents = read_npz(bomb_with_features, wanted=["features", "labels"], name="data", max_bytes=MiB)
    assert list(contents.arrays) == ["features"] and contents.arrays["features"].shape == (3, 2)
    assert contents.names == ["features", "x", "y"]
    with pytest.raises(NpzRefused, match=r"array 'x' declares 3\.7 GiB uncompressed"):
        read_npz(bomb_with_features, wanted=["x"], name="data", max_bytes=MiB)


def test_a_file_that_cannot_be_opened_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(NpzUnreadable, match=r"gone\.npz: not a readable NPZ file: No such file"):
        read_split(tmp_path / "gone.npz")
