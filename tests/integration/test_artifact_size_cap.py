"""The artifact size cap (GALLERY_MAX_ARTIFACT_BYTES) on every read path, against file:// on a temp dir and
s3:// on moto's S3 API server: an artifact stored over the cap is refused before it is fetched, one that
grows past it while read is stopped, and the reason names the artifact and both sizes."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from gallery_common.artifacts import ArtifactStore, ArtifactTooLarge, open_store
from gallery_common.settings import GallerySettings

MiB = 1024 * 1024


def settings_for(request: pytest.FixtureRequest, max_bytes: int) -> GallerySettings:
    if request.param == "file":
        return GallerySettings(max_artifact_bytes=max_bytes)
    server = request.getfixturevalue("s3_server")
    return GallerySettings(
        s3_endpoint=server.endpoint,
        s3_access_key=server.access_key,
        s3_secret_key=server.secret_key,
        max_artifact_bytes=max_bytes,
    )


@pytest.fixture(params=["file", "s3"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[ArtifactStore, ArtifactStore]:
    """One root seen through two stores: one that takes anything, one capped at 1 MiB."""
    if request.param == "file":
        root = (tmp_path / "artifacts").as_uri()
    else:
        root = request.getfixturevalue("s3_server").new_bucket_uri("gallery")
    return open_store(root, settings_for(request, 1024**3)), open_store(root, settings_for(request, MiB))


def test_the_default_cap_is_two_gib(tmp_path: Path) -> None:
    assert GallerySettings.model_fields["max_artifact_bytes"].default == 2 * 1024**3
    assert open_store(tmp_path.as_uri(), GallerySettings()).max_bytes == 2 * 1024**3  # type: ignore[attr-defined]


def test_an_artifact_over_the_cap_is_refused_on_every_read_before_it_is_fetched(
    stores: tuple[ArtifactStore, ArtifactStore], tmp_path: Path
) -> None:
    writer, capped = stores
    ref = writer.put("models/big/model.onnx", os.urandom(3 * MiB))
    expected = (
        f"artifact {ref.uri} is 3.0 MiB (3145728 bytes), over the 1.0 MiB (1048576 bytes) a service fetches "
        "(GALLERY_MAX_ARTIFACT_BYTES); it was not fetched"
    )
    dest = tmp_path / "downloads" / "model.onnx"
    attempts = {
        "get": lambda: capped.get(ref.uri, ref.sha256),
        "download": lambda: capped.download(ref.uri, dest, ref.sha256),
        "verify": lambda: capped.verify(ref.uri, ref.sha256),
    }
    for name, attempt in attempts.items():
        with pytest.raises(ArtifactTooLarge) as refused:
            attempt()
        assert refused.value.message == expected, name
        assert refused.value.status_code == 413
    with pytest.raises(ArtifactTooLarge, match="it was not fetched"), capped.open(ref.uri) as stream:
        stream.read()
    assert not dest.exists() and not any((tmp_path / "downloads").glob("*"))


def test_an_artifact_at_the_cap_is_read_as_usual(stores: tuple[ArtifactStore, ArtifactStore], tmp_path: Path) -> None:
    writer, capped = stores
    content = os.urandom(MiB)
    ref = writer.put("splits/test.npz", content)
    assert capped.get(ref.uri, ref.sha256) == content
    assert capped.download(ref.uri, tmp_path / "test.npz", ref.sha256).read_bytes() == content
    capped.verify(ref.uri, ref.sha256)
    with capped.open(ref.uri) as stream:
        assert stream.read() == content


def test_a_file_that_grows_past_the_cap_while_read_is_stopped(tmp_path: Path) -> None:
    # a named pipe has no size to check up front: it shows what happens to a file that grows while read
    store = open_store((tmp_path / "artifacts").as_uri(), GallerySettings(max_artifact_bytes=MiB))
    fifo = tmp_path / "artifacts" / "data" / "stream.npz"
    fifo.parent.mkdir(parents=True)
    written: list[int] = []

    def feed() -> None:
        try:
            with open(fifo, "wb") as out:
                for _ in range(8):
                    out.write(b"\0" * MiB)
                    written.append(MiB)
        except BrokenPipeError:
            pass  # the reader stopped: what we want

    for attempt in (lambda: store.get("data/stream.npz"), lambda: store.download("data/stream.npz", tmp_path / "d")):
        written.clear()
        os.mkfifo(fifo)
        writer = threading.Thread(target=feed)
        writer.start()
        with pytest.raises(ArtifactTooLarge) as refused:
            attempt()
        writer.join(10)
        fifo.unlink()
        assert refused.value.message.startswith(
            f"artifact {store.uri_for('data/stream.npz')} grew past the 1.0 MiB (1048576 bytes) a service fetches "
            "(GALLERY_MAX_ARTIFACT_BYTES) while it was fetched; stopped after"
        )
        assert sum(written) <= 3 * MiB  # the reader hung up long before the writer's 8 MiB were through
    assert not (tmp_path / "d").exists()
