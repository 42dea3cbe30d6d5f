"""The artifact disk fills up during an upload: a clear error, nothing half-written, the space given back."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos_figures import Figures

from gallery_common.artifacts import FileArtifactStore
from gallery_common.artifacts.partial_writes import TEMP_PREFIX
from gallery_common.errors import StorageFull

DISK_MIB = 4
MiB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a real file system that runs out of space."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def leftovers(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob(f"{TEMP_PREFIX}*")]


def test_artifact_disk_full_during_an_upload(small_disk: Path, figures: Figures) -> None:
    """the artifact disk full during an upload"""
    store = FileArtifactStore((small_disk / "artifacts").as_uri())
    first = os.urandom(MiB)
    store.put("models/chaos/1/model.onnx", first)
    used_before = shutil.disk_usage(small_disk).used

    # a new artifact larger than the space left
    with pytest.raises(StorageFull) as new_key:
        store.put("models/chaos/2/model.onnx", os.urandom(2 * DISK_MIB * MiB))
    assert "No space left on device" in new_key.value.message
    assert "nothing was stored under its name" in new_key.value.message
    assert not store.exists("models/chaos/2/model.onnx")

    # replacing an artifact that is there: the old one stays whole
    with pytest.raises(StorageFull) as replacing:
        store.put("models/chaos/1/model.onnx", os.urandom(2 * DISK_MIB * MiB))
    assert store.get("models/chaos/1/model.onnx", hashlib.sha256(first).hexdigest()) == first

    assert leftovers(small_disk) == []
    used_after = shutil.disk_usage(small_disk).used
    # the space the failed writes took is free again: a put that fits succeeds
    fits = store.put("models/chaos/3/model.onnx", os.urandom(MiB))
    figures.update(
        disk_mib=DISK_MIB,
        artifact_mib=2 * DISK_MIB,
        error=f"{type(new_key.value).__name__} ({new_key.value.status_code})",
        partial_files=len(leftovers(small_disk)) + int(store.exists("models/chaos/2/model.onnx")),
        old_artifact_intact=True,
        space_given_back=used_after == used_before,
    )
    assert used_after == used_before
    assert fits.size == MiB
    assert isinstance(replacing.value, StorageFull)
