"""Loading a job's examples: built-in scikit-learn sets, CSV and NPZ artifacts, image folders, and texts
(`gallery_trainer.text_data`).

Every loader returns a `Dataset`: raw FP32 features (or texts), labels, and the fingerprint (sha256 of the raw
bytes and the target) that ties a model to exactly these examples.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from gallery_common.artifacts import ArtifactStore
from gallery_common.contracts import NpzRefused, read_npz
from gallery_trainer.spec import DataSpec

# digits ships as 8x8 grey images with values 0..16
BUILTIN_IMAGE_SHAPES = {"digits": (1, 8, 8)}


class DataError(ValueError):
    """The examples cannot be loaded or do not fit the spec; the message names the field or the row."""


@dataclass
class Dataset:
    """Examples as arrays: `x` FP32 [N, F] (or a unicode array [N] of texts); `y` int64 class indices or FP32
    targets."""

    x: np.ndarray
    y: np.ndarray
    task: str
    class_names: list[str] | None
    feature_names: list[str]
    image_shape: tuple[int, int, int] | None
    fingerprint: str

    @property
    def n_classes(self) -> int:
        return len(self.class_names or [])


def fingerprint(chunks: Iterable[bytes], target: str) -> str:
    """sha256 over the raw data bytes followed by the target's name."""
    hasher = hashlib.sha256()
    for chunk in chunks:
        hasher.update(chunk)
    hasher.update(b"\x00target=" + target.encode("utf-8"))
    return hasher.hexdigest()


def load_dataset(spec: DataSpec, store: ArtifactStore | None = None) -> Dataset:
    """Load the examples a data spec names; DataError says what is wrong with them.

    A local path (`data.path`, a `file://` URI read without a store) must resolve inside the trainer's
    data roots (GALLERY_DATA_ROOTS), or any folder's files would leave through the splits.
    """
    if spec.is_text:
        from gallery_trainer.text_data import load_text_dataset

        return load_text_dataset(spec, store)
    if spec.source == "builtin":
        dataset = _load_builtin(spec)
    elif spec.source == "csv":
        dataset = _load_csv(spec, _read_artifact(spec, store))
    elif spec.source == "npz":
        dataset = _load_npz(spec, _read_artifact(spec, store))
    else:
        from gallery_trainer.images import load_image_folder

        if spec.path is not None:
            # the loader reads the folder as resolved and checked here, not the path as the spec wrote it
            spec = spec.model_copy(update={"path": str(_local_path(spec.path, "data.path"))})
        dataset = load_image_folder(spec, store)
    if spec.image_shape is not None:
        if int(np.prod(spec.image_shape)) != dataset.x.shape[1]:
            raise DataError(
                f"data.image_shape: {list(spec.image_shape)} holds {int(np.prod(spec.image_shape))} values "
                f"but each example has {dataset.x.shape[1]} features"
            )
        dataset.image_shape = spec.image_shape
    _check(dataset)
    return dataset


def _check(dataset: Dataset) -> None:
    if len(dataset.x) == 0:
        raise DataError("data: the data set has no examples")
    if not np.isfinite(dataset.x).all():
        row = int(np.argwhere(~np.isfinite(dataset.x))[0][0])
        raise DataError(f"data: example {row} has a missing or infinite feature value")
    if dataset.task == "regression" and not np.isfinite(dataset.y).all():
        raise DataError("data: a regression target is missing or infinite")
    if dataset.task == "classification" and dataset.n_classes < 2:
        raise DataError(f"data: classification needs at least 2 classes, found {dataset.n_classes}")


def _local_path(path: str, field: str) -> Path:
    """`path` resolved (symlinks, `..`) when it lies inside a data root; DataError naming `field` if not.

    The roots come from this process's settings: data is read only by the trainer (or a node preparing a
    job), never by a rank elsewhere.
    """
    from gallery_common.settings import load_settings
    from gallery_trainer.admission import resolve_inside
    from gallery_trainer.settings import TrainerSettings

    data_roots = load_settings(TrainerSettings).resolved_data_roots
    resolved = resolve_inside(path, data_roots)
    if resolved is None:
        roots = ", ".join(str(root) for root in data_roots) or "none configured"
        raise DataError(
            f"{field}: {path} is not an absolute path inside the data roots this trainer may read ({roots})"
        )
    return resolved


def _read_artifact(spec: DataSpec, store: ArtifactStore | None) -> bytes:
    """The artifact's bytes, verified against the spec's sha256."""
    assert spec.uri is not None and spec.sha256 is not None
    if store is not None:
        try:
            return store.get(spec.uri, sha256=spec.sha256)
        except Exception as exc:
            raise DataError(f"data.uri: cannot read {spec.uri}: {exc}") from exc
    parsed = urlparse(spec.uri)
    if parsed.scheme != "file":
        raise DataError(f"data.uri: {spec.uri} needs an artifact store, and none was given")
    path = _local_path(unquote(parsed.path), "data.uri")
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise DataError(f"data.uri: cannot read {spec.uri}: {exc.strerror}") from exc
    if hashlib.sha256(content).hexdigest() != spec.sha256:
        raise DataError(f"data.sha256: {spec.uri} does not match the sha256 in the spec")
    return content


def _load_builtin(spec: DataSpec) -> Dataset:
    from sklearn import datasets

    loaders = {
        "digits": datasets.load_digits,
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
    }
    assert spec.name is not None
    bunch = loaders[spec.name]()
    x = np.ascontiguousarray(bunch.data, dtype=np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    names = [str(name) for name in bunch.target_names]
    features = [str(name) for name in bunch.get("feature_names", [f"f{i}" for i in range(x.shape[1])])]
    return Dataset(
        x=x,
        y=y,
        task="classification",
        class_names=names,
        feature_names=features,
        image_shape=BUILTIN_IMAGE_SHAPES.get(spec.name),
        fingerprint=fingerprint([x.tobytes(), y.tobytes()], spec.name),
    )


def encode_labels(values: list[str] | np.ndarray, field: str) -> tuple[np.ndarray, list[str]]:
    """Class labels as indices 0..C-1 plus the class names, ordered numerically when every label is a number."""
    labels = [str(value) for value in np.asarray(values).tolist()]
    unique = sorted(set(labels))
    with contextlib.suppress(ValueError):  # not all numbers: keep the text order
        unique = sorted(unique, key=float)
    if len(unique) > 10_000:
        raise DataError(f"{field}: {len(unique)} distinct labels; is this a regression target?")
    index = {name: i for i, name in enumerate(unique)}
    return np.array([index[label] for label in labels], dtype=np.int64), unique


def _load_csv(spec: DataSpec, content: bytes) -> Dataset:
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError("data: the CSV file is not UTF-8 text") from None
    rows = list(csv.reader(io.StringIO(text)))
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if len(rows) < 2:
        raise DataError("data: the CSV file needs a header row and at least one example")
    header = [name.strip() for name in rows[0]]
    target = spec.target or header[-1]
    if target not in header:
        raise DataError(f"data.target: no column {target!r} in the CSV header ({', '.join(header)})")
    target_col = header.index(target)
    feature_cols = [i for i in range(len(header)) if i != target_col]
    if not feature_cols:
        raise DataError("data: the CSV file has no feature columns besides the target")
    x = np.empty((len(rows) - 1, len(feature_cols)), dtype=np.float32)
    targets: list[str] = []
    for r, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"data: CSV line {r} has {len(row)} fields, the header has {len(header)}")
        for j, col in enumerate(feature_cols):
            try:
                x[r - 2, j] = float(row[col])
            except ValueError:
                raise DataError(f"data: CSV line {r}, column {header[col]!r}: {row[col]!r} is not a number") from None
        targets.append(row[target_col].strip())
    y, class_names = _targets(spec, targets, "data.target")
    return Dataset(
        x=x,
        y=y,
        task=spec.task,
        class_names=class_names,
        feature_names=[header[i] for i in feature_cols],
        image_shape=None,
        fingerprint=fingerprint([content], target),
    )


def _targets(spec: DataSpec, values: list[str] | np.ndarray, field: str) -> tuple[np.ndarray, list[str] | None]:
    if spec.task == "classification":
        return encode_labels(values, field)
    try:
        return np.asarray(values, dtype=np.float32), None
    except ValueError:
        raise DataError(f"{field}: a regression target must be numeric") from None


def _load_npz(spec: DataSpec, content: bytes) -> Dataset:
    # the shared reader: sizes checked against GALLERY_MAX_SPLIT_BYTES before anything is inflated, object
    # arrays refused, arrays the spec does not name never inflated
    target = spec.target or "y"
    try:
        contents = read_npz(content, wanted=[spec.features, target, "class_names"], name="data")
    except NpzRefused as exc:
        raise DataError(str(exc)) from None
    for key, field in ((spec.features, "data.features"), (target, "data.target")):
        if key not in contents.arrays:
            raise DataError(f"{field}: no array {key!r} in the NPZ file (it has {', '.join(contents.names)})")
    raw_x, raw_y = contents.arrays[spec.features], contents.arrays[target]
    names = contents.arrays.get("class_names")
    declared = names.tolist() if names is not None else None
    if raw_x.ndim < 2 or not np.issubdtype(raw_x.dtype, np.number):
        raise DataError(f"data.features: {spec.features!r} must be a numeric array of one row per example")
    if len(raw_y) != len(raw_x) or raw_y.ndim != 1:
        raise DataError(f"data.target: {target!r} must be one label per example ({len(raw_x)})")
    image_shape = None
    if raw_x.ndim == 3:
        image_shape = (1, *raw_x.shape[1:])
    elif raw_x.ndim == 4:
        image_shape = tuple(raw_x.shape[1:])
    x = np.ascontiguousarray(raw_x.reshape(len(raw_x), -1), dtype=np.float32)
    y, class_names = _targets(spec, raw_y, "data.target")
    # integer labels may come with their names; text labels already are names
    if (
        class_names is not None
        and declared is not None
        and np.issubdtype(raw_y.dtype, np.integer)
        and len(declared) == len(class_names)
    ):
        class_names = [str(name) for name in declared]
    return Dataset(
        x=x,
        y=y,
        task=spec.task,
        class_names=class_names,
        feature_names=[f"f{i}" for i in range(x.shape[1])],
        image_shape=image_shape,  # type: ignore[arg-type]
        fingerprint=fingerprint([content], target),
    )
