"""The artifact store contract: the same tests against file:// on a temp dir and s3:// on moto's S3 API server."""

from __future__ import annotations

import hashlib
import io
import os
import time
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from gallery_common.artifacts import ArtifactStore, FileArtifactStore, S3ArtifactStore, open_store
from gallery_common.errors import ArtifactError, ArtifactNotFound, IntegrityError, InvalidKey
from gallery_common.settings import GallerySettings

MiB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class GeneratedStream:
    """A non-seekable binary stream over a generator of blocks, as a socket or a pipe would be."""

    def __init__(self, blocks: Iterable[bytes]) -> None:
        self._blocks = iter(blocks)
        self._pending = b""
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        parts, wanted = [self._pending], size - len(self._pending)
        while size < 0 or wanted > 0:
            block = next(self._blocks, None)
            if block is None:
                break
            parts.append(block)
            wanted -= len(block)
        joined = b"".join(parts)
        data = joined if size < 0 else joined[:size]
        self._pending = joined[len(data) :]
        self._hash.update(data)
        self.size += len(data)
        return data

    @property
    def sha256(self) -> str:
        """The digest of what has been read, computed independently of any store."""
        return self._hash.hexdigest()


def blocks(total: int, block_size: int = MiB) -> Iterator[bytes]:
    seed = os.urandom(block_size)
    for index in range(total // block_size):
        # Each block differs, so a part uploaded twice or out of order changes the digest.
        yield index.to_bytes(8, "big") + seed[8:]


@pytest.fixture
def s3_settings(s3_server) -> GallerySettings:
    return GallerySettings(
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        s3_secure=False,
    )


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "file":
        return open_store((tmp_path / "artifacts").as_uri())
    server = request.getfixturevalue("s3_server")
    return open_store(server.new_bucket_uri("gallery"), request.getfixturevalue("s3_settings"))


@pytest.fixture
def file_store(tmp_path: Path) -> FileArtifactStore:
    store = open_store((tmp_path / "artifacts").as_uri())
    assert isinstance(store, FileArtifactStore)
    return store


def test_open_store_picks_the_implementation_by_scheme(tmp_path: Path, s3_settings: GallerySettings) -> None:
    assert isinstance(open_store(tmp_path.as_uri()), FileArtifactStore)
    assert isinstance(open_store("s3://models/prod", s3_settings), S3ArtifactStore)
    with pytest.raises(ArtifactError, match="known schemes"):
        open_store("gs://bucket/models")


@pytest.mark.parametrize("kind", ["bytes", "path", "seekable stream", "generated stream", "empty"])
def test_round_trip(store: ArtifactStore, tmp_path: Path, kind: str) -> None:
    data = b"" if kind == "empty" else os.urandom(300_000)
    source: object
    if kind == "path":
        source = tmp_path / "weights.bin"
        source.write_bytes(data)
    elif kind == "seekable stream":
        source = io.BytesIO(data)
    elif kind == "generated stream":
        source = GeneratedStream([data[i : i + 70_000] for i in range(0, len(data), 70_000)])
    else:
        source = data
    key = "models/resnet/3/weights.bin"

    ref = store.put(key, source, content_type="application/octet-stream")  # type: ignore[arg-type]

    assert (ref.sha256, ref.size) == (sha(data), len(data))
    assert ref.uri == store.uri_for(key)
    assert store.get(key, sha256=ref.sha256) == data
    assert store.get(ref.uri) == data
    with store.open(ref.uri) as stream:
        assert stream.read() == data
    dest = store.download(key, tmp_path / "out" / "weights.bin", sha256=ref.sha256)
    assert dest.read_bytes() == data
    store.verify(ref.uri, ref.sha256)


def test_put_replaces_an_existing_artifact(store: ArtifactStore) -> None:
    store.put("a/model.onnx", b"first")
    ref = store.put("a/model.onnx", b"second")
    assert store.get("a/model.onnx", ref.sha256) == b"second"
    assert [info.key for info in store.list()] == ["a/model.onnx"]


def test_digest_mismatch_is_detected_on_get_verify_and_download(store: ArtifactStore, tmp_path: Path) -> None:
    good = store.put("m/weights.bin", b"trained weights")
    store.put("m/weights.bin", b"tampered weights")
    dest = tmp_path / "dl" / "weights.bin"

    with pytest.raises(IntegrityError) as caught:
        store.get("m/weights.bin", sha256=good.sha256)
    message = str(caught.value)
    assert good.uri in message and good.sha256 in message and sha(b"tampered weights") in message

    with pytest.raises(IntegrityError):
        store.verify(good.uri, good.sha256)
    with pytest.raises(IntegrityError):
        store.download(good.uri, dest, sha256=good.sha256)
    assert list(dest.parent.iterdir()) == []  # no partial or temp file left behind

    dest.write_bytes(b"previous copy")
    with pytest.raises(IntegrityError):
        store.download(good.uri, dest, sha256=good.sha256)
    assert dest.read_bytes() == b"previous copy"
    assert list(dest.parent.iterdir()) == [dest]


def test_a_malformed_digest_is_not_reported_as_corruption(store: ArtifactStore) -> None:
    store.put("k", b"x")
    with pytest.raises(ArtifactError, match="not a sha256") as caught:
        store.get("k", sha256="abc")
    assert not isinstance(caught.value, IntegrityError)


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/../../b", "a\x00b", "a\\b", "", "a//b", "./a", "a/"])
def test_keys_escaping_the_root_are_rejected(store: ArtifactStore, tmp_path: Path, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.put(key, b"evil")
    for operation in (store.get, store.exists, store.delete, store.uri_for):
        with pytest.raises(InvalidKey):
            operation(key)
    with pytest.raises(InvalidKey):
        store.download(key, tmp_path / "x")
    assert list(store.list()) == []
    assert not (tmp_path / "x").exists()


def test_symlink_out_of_the_root_is_rejected(file_store: FileArtifactStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"private key")
    root = tmp_path / "artifacts"
    (root / "models").mkdir()
    (root / "models" / "escape").symlink_to(outside, target_is_directory=True)
    (root / "models" / "leak").symlink_to(outside / "secret")

    for key in ("models/escape/secret", "models/leak"):
        with pytest.raises(InvalidKey, match="outside"):
            file_store.get(key)
        with pytest.raises(InvalidKey):
            file_store.download(key, tmp_path / "dl")
    with pytest.raises(InvalidKey):
        file_store.put("models/escape/planted", b"x")
    with pytest.raises(InvalidKey):
        file_store.delete("models/leak")
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert list(file_store.list()) == []
    assert list(file_store.list("models/escape/")) == []


def test_exists_delete_and_list_with_prefix(store: ArtifactStore) -> None:
    contents = {
        "models/a/1": b"one",
        "models/a/2": b"two!",
        "models/ab/3": b"3",
        "models/a.txt": b"text",
        "other/x": b"",
    }
    assert not store.exists("models/a/1")
    assert list(store.list()) == []
    for key, data in contents.items():
        store.put(key, data)

    assert store.exists("models/a/1") and store.exists(store.uri_for("other/x"))
    assert not store.exists("models/a")  # a key prefix is not an artifact
    everything = list(store.list())
    assert [i.key for i in everything] == sorted(contents)  # key order, as S3 lists
    assert {i.key: i.size for i in everything} == {k: len(v) for k, v in contents.items()}
    assert all(i.uri == store.uri_for(i.key) for i in everything)
    assert [i.key for i in store.list("models/a/")] == ["models/a/1", "models/a/2"]
    assert [i.key for i in store.list("models/a")] == ["models/a.txt", "models/a/1", "models/a/2", "models/ab/3"]
    assert list(store.list("nothing/")) == []
    with pytest.raises(InvalidKey):
        list(store.list("../"))

    store.delete("models/a/1")
    store.delete(store.uri_for("models/a/1"))  # a second delete is not an error
    assert not store.exists("models/a/1")
    with pytest.raises(ArtifactNotFound):
        store.get("models/a/1")
    assert [i.key for i in store.list("models/a/")] == ["models/a/2"]


def test_uri_and_key_round_trip_and_foreign_uris_are_rejected(store: ArtifactStore) -> None:
    for key in ("a", "models/resnet 50/v1/model.onnx", "ünïcode/ok#1?.bin"):
        uri = store.uri_for(key)
        assert uri.startswith(store.root_uri + "/")
        assert store.key_for(uri) == key
        store.put(uri if key == "a" else key, b"payload")
        assert store.get(uri) == b"payload"

    for foreign in (
        store.root_uri,
        store.root_uri + "/",
        store.root_uri + "-sibling/a",
        store.root_uri + "/../escape",
        store.root_uri + "/x/../../escape",
        "file:///etc/passwd",
        "s3://another-bucket/gallery/a",
        "https://example.com/a",
    ):
        with pytest.raises(InvalidKey):
            store.key_for(foreign)
        with pytest.raises(InvalidKey):
            store.get(foreign)


def test_missing_artifacts_raise_not_found(store: ArtifactStore, tmp_path: Path) -> None:
    # On s3:// nothing has created the bucket yet, so this also covers a missing bucket.
    assert not store.exists("missing")
    store.delete("missing")
    with pytest.raises(ArtifactNotFound):
        store.get("missing")
    with pytest.raises(ArtifactNotFound):
        store.verify("missing", sha(b""))
    with pytest.raises(ArtifactNotFound), store.open(store.uri_for("missing")):
        pass
    with pytest.raises(ArtifactNotFound):
        store.download("missing", tmp_path / "dl" / "missing")
    assert not (tmp_path / "dl" / "missing").exists()

    store.put("present", b"x")
    with pytest.raises(ArtifactNotFound):
        store.get("missing")


@pytest.mark.slow
def test_a_200_mb_artifact_streams_with_bounded_memory(store: ArtifactStore, tmp_path: Path) -> None:
    size = 200 * MiB
    source = GeneratedStream(blocks(size))
    dest = tmp_path / "big.bin"

    started = time.perf_counter()
    tracemalloc.start()
    try:
        ref = store.put("big/model.safetensors", source)  # type: ignore[arg-type]
        store.download(ref.uri, dest, sha256=source.sha256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started

    assert (ref.size, ref.sha256) == (size, source.sha256)
    assert dest.stat().st_size == size
    assert peak < 64 * MiB, f"peak Python heap {peak / MiB:.1f} MiB while streaming {size / MiB:.0f} MiB"
    print(f"\n{store!r}: 200 MiB put+download in {elapsed:.1f}s, peak heap {peak / MiB:.1f} MiB")
