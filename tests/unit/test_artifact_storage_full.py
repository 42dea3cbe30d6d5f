"""A full disk while an artifact is written: StorageFull (507, retried as an event), nothing half-written.

The chaos suite (tests/chaos/test_disk_full.py) fills a real tmpfs; here the file system's answer is given.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gallery_common.artifacts.base import write_atomically
from gallery_common.artifacts.partial_writes import TEMP_PREFIX
from gallery_common.consumer import TransientError
from gallery_common.errors import StorageFull
from gallery_common.router import delivery_error


def chunks_until_the_disk_fills() -> Iterator[bytes]:
    yield b"x" * 1024
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_is_storage_full_and_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "model.onnx"
    dest.write_bytes(b"old")
    with pytest.raises(StorageFull) as full:
        write_atomically(dest, chunks_until_the_disk_fills(), artifact="file:///store/model.onnx")
    assert full.value.status_code == 507
    assert full.value.message.startswith("cannot write file:///store/model.onnx: No space left on device")
    assert dest.read_bytes() == b"old"
    assert not list(tmp_path.glob(f"{TEMP_PREFIX}*"))
    # an event whose handler met a full disk is retried later, not dead-lettered
    assert isinstance(delivery_error(full.value), TransientError)
