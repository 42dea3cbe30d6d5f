"""The S3 store against a server whose object grows past the size it declared (or that declares none): the
read is stopped at the cap (GALLERY_MAX_ARTIFACT_BYTES) with the reason, on every read path."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gallery_common.artifacts import ArtifactTooLarge, S3ArtifactStore

MiB = 1024 * 1024


class GrowingBody(io.RawIOBase):
    """An object body of `size` bytes sent under a `declared` Content-Length (None: no header)."""

    def __init__(self, size: int, declared: int | None) -> None:
        self._left = size
        self.sent = 0
        self.headers = {} if declared is None else {"Content-Length": str(declared)}

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self._left, 64 * 1024)
        buffer[:count] = b"\0" * count
        self._left -= count
        self.sent += count
        return count

    def stream(self, amt: int) -> Iterator[bytes]:
        while chunk := self.read(amt):
            yield chunk

    def release_conn(self) -> None:
        pass


class GrowingServer:
    """The part of the S3 client a read uses; every object is 8 MiB whatever it declares."""

    def __init__(self, declared: int | None) -> None:
        self.declared = declared
        self.bodies: list[GrowingBody] = []

    def get_object(self, bucket_name: str, object_name: str) -> GrowingBody:
        body = GrowingBody(8 * MiB, self.declared)
        self.bodies.append(body)
        return body

    def stat_object(self, bucket_name: str, object_name: str) -> Any:
        return SimpleNamespace(size=self.declared)


@pytest.mark.parametrize("declared", [100, None], ids=["understated", "undeclared"])
def test_a_body_that_runs_past_the_cap_is_stopped_there(declared: int | None, tmp_path: Path) -> None:
    server = GrowingServer(declared)
    store = S3ArtifactStore("s3://bucket/pre", client=server, max_bytes=MiB)  # type: ignore[arg-type]
    reads = {
        "get": lambda: store.get("models/m.onnx"),
        "download": lambda: store.download("models/m.onnx", tmp_path / "m.onnx"),
        "verify": lambda: store.verify("models/m.onnx", "0" * 64),
    }
    for name, read in reads.items():
        with pytest.raises(ArtifactTooLarge) as stopped:
            read()
        assert stopped.value.message.startswith(
            "artifact s3://bucket/pre/models/m.onnx grew past the 1.0 MiB (1048576 bytes) a service fetches "
            "(GALLERY_MAX_ARTIFACT_BYTES) while it was"
        ), name
        assert server.bodies[-1].sent <= 2 * MiB, name  # not the 8 MiB the server would have sent
    with pytest.raises(ArtifactTooLarge, match=r"grew past the 1\.0 MiB"), store.open("models/m.onnx") as stream:
        while stream.read(256 * 1024):
            pass
    assert server.bodies[-1].sent <= 2 * MiB
    assert not (tmp_path / "m.onnx").exists()
