"""Image folders in the ImageFolder layout: `root/<class>/<picture>.png|jpg`, one subfolder per class.

Pictures are decoded with Pillow (a dependency of matplotlib, so always present beside it), converted
to RGB or grey, resized to `data.image_size`, scaled to [0, 1] and flattened channel-first.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from gallery_common.artifacts import ArtifactStore
from gallery_trainer.class_folders import local_class_files, stored_class_files
from gallery_trainer.data import DataError, Dataset, fingerprint
from gallery_trainer.spec import DataSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def load_image_folder(spec: DataSpec, store: ArtifactStore | None) -> Dataset:
    """Decode every picture below the folder; the class is the name of its subfolder."""
    files = (
        local_class_files(Path(spec.path), _is_picture)
        if spec.path is not None
        else stored_class_files(spec, store, _is_picture)
    )
    if not files:
        raise DataError(f"data: no PNG or JPEG pictures in class subfolders of {spec.path or spec.uri}")
    class_names = sorted({cls for cls, _, _ in files})
    index = {name: i for i, name in enumerate(class_names)}
    channels = 1 if spec.grayscale else 3
    height, width = spec.image_size
    x = np.empty((len(files), channels * height * width), dtype=np.float32)
    for row, (cls, name, content) in enumerate(files):
        x[row] = _decode(content, spec, f"{cls}/{name}")
    y = np.array([index[cls] for cls, _, _ in files], dtype=np.int64)
    digest = fingerprint((f"{cls}/{name}\x00".encode() + content for cls, name, content in files), "class-folder")
    return Dataset(
        x=x,
        y=y,
        task="classification",
        class_names=class_names,
        feature_names=[f"c{c}_y{i}_x{j}" for c in range(channels) for i in range(height) for j in range(width)],
        image_shape=(channels, height, width),
        fingerprint=digest,
    )


def _decode(content: bytes, spec: DataSpec, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(content)) as picture:
            converted = picture.convert("L" if spec.grayscale else "RGB")
            resized = converted.resize((spec.image_size[1], spec.image_size[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(resized, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"data: picture {name} cannot be decoded: {exc}") from None
    channels_first = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return channels_first.reshape(-1)


def _is_picture(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)
