"""Data sets laid out in class folders, `root/<class>/<file>` (images, texts): the files a loader takes, as
(class, file name, bytes), from a local folder or a folder prefix in the artifact store, sorted by class and
name so a data set reads the same every time. Hidden folders and files are passed over."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gallery_common.artifacts import ArtifactStore
from gallery_trainer.data import DataError
from gallery_trainer.spec import DataSpec

ClassFile = tuple[str, str, bytes]


def local_class_files(root: Path, wanted: Callable[[str], bool]) -> list[ClassFile]:
    """The files below `root`'s class subfolders whose names `wanted` takes."""
    if not root.is_dir():
        raise DataError(f"data.path: {root} is not a folder")
    files = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for item in sorted(folder.iterdir()):
            if item.is_file() and not item.name.startswith(".") and wanted(item.name):
                files.append((folder.name, item.name, item.read_bytes()))
    return files


def stored_class_files(spec: DataSpec, store: ArtifactStore | None, wanted: Callable[[str], bool]) -> list[ClassFile]:
    """The same from the artifact store, below the folder prefix `spec.uri`."""
    if store is None:
        raise DataError(f"data.uri: {spec.uri} needs an artifact store, and none was given")
    assert spec.uri is not None
    try:
        prefix = store.key_for(spec.uri.rstrip("/")) + "/"
    except Exception as exc:
        raise DataError(f"data.uri: {exc}") from None
    files = []
    for info in store.list(prefix):
        parts = info.key[len(prefix) :].split("/")
        if len(parts) == 2 and not parts[0].startswith(".") and not parts[1].startswith(".") and wanted(parts[1]):
            files.append((parts[0], parts[1], store.get(info.key)))
    return sorted(files, key=lambda item: (item[0], item[1]))
