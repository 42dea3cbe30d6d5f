"""Artifact keys, digests, sources and the scheme registry, without any server."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from gallery_common.artifacts import FileArtifactStore, open_store, register_store, registered_schemes, schemes
from gallery_common.artifacts.base import (
    HashingReader,
    check_digest,
    normalize_sha256,
    open_source,
    validate_key,
    validate_prefix,
    write_atomically,
)
from gallery_common.artifacts.partial_writes import TEMP_PREFIX
from gallery_common.errors import ArtifactError, IntegrityError, InvalidKey


@pytest.mark.parametrize(
    "key",
    ["model.onnx", "models/resnet/3/model.onnx", "a b/ü/x#1?.bin", ".hidden", "a/...", "v1:2", "x" * 1024],
)
def test_canonical_keys_are_accepted_unchanged(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "empty"),
        ("../x", "'..'"),
        ("a/../../b", "'..'"),
        ("a/..", "'..'"),
        ("/etc/passwd", "absolute"),
        ("a\x00b", "NUL"),
        ("a\nb", "control"),
        ("a\\b", "backslash"),
        ("..\\..\\x", "backslash"),
        ("a//b", "empty"),
        ("a/", "empty"),
        ("./a", "'.'"),
        ("s3://bucket/a", "URI"),
        ("file:///etc/passwd", "URI"),
        ("x" * 1025, "1024 bytes"),
        ("\ud800", "Unicode"),
    ],
)
def test_keys_that_could_escape_or_alias_are_rejected_with_a_reason(key: str, reason: str) -> None:
    with pytest.raises(InvalidKey, match=reason):
        validate_key(key)


def test_a_non_string_key_is_rejected() -> None:
    with pytest.raises(InvalidKey, match="string"):
        validate_key(b"a")  # type: ignore[arg-type]


def test_listing_prefixes_may_be_partial_or_end_with_a_slash() -> None:
    for prefix in ("", "models/", "models/res", "m"):
        assert validate_prefix(prefix) == prefix
    for prefix in ("../", "/abs", "a//", "a/../"):
        with pytest.raises(InvalidKey):
            validate_prefix(prefix)


def test_digests_are_normalized_and_malformed_ones_refused() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    assert normalize_sha256(digest.upper()) == digest
    for bad in ("", "abc", digest + "0", "g" * 64):
        with pytest.raises(ArtifactError, match="not a sha256"):
            normalize_sha256(bad)


def test_a_mismatch_names_the_artifact_and_both_digests() -> None:
    with pytest.raises(IntegrityError, match=r"s3://b/k.*expected sha256 aa.*got bb"):
        check_digest("s3://b/k", "aa", "bb")


def test_hashing_reader_refuses_a_text_stream() -> None:
    with pytest.raises(TypeError, match="binary stream"):
        HashingReader(io.StringIO("text")).read(4)  # type: ignore[arg-type]


def test_sources_report_their_length_and_whether_they_can_be_replayed(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"12345")
    with open_source(b"abc") as opened:
        assert (opened.length, opened.rewind is not None) == (3, True)
    with open_source(path) as opened:
        assert opened.stream.read(2) == b"12"
        assert opened.rewind is not None
        opened.rewind()
        assert (opened.length, opened.stream.read()) == (5, b"12345")
    seekable = io.BytesIO(b"skip-rest")
    seekable.read(5)
    with open_source(seekable) as opened:
        assert opened.length is None
        opened.stream.read()
        assert opened.rewind is not None
        opened.rewind()
        assert opened.stream.read() == b"rest"  # rewinds to where the caller left it, not to 0

    class Pipe:
        def read(self, size: int = -1) -> bytes:
            return b""

    with open_source(Pipe()) as opened:  # type: ignore[arg-type]
        assert (opened.length, opened.rewind) == (None, None)
    with pytest.raises(TypeError, match="not str"), open_source("some/file"):  # type: ignore[arg-type]
        pass


def test_an_interrupted_atomic_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "d" / "model.onnx"
    dest.parent.mkdir()
    dest.write_bytes(b"old")

    def failing_chunks():
        yield b"new part"
        raise ConnectionResetError("peer went away")

    with pytest.raises(ConnectionResetError):
        write_atomically(dest, failing_chunks())
    assert dest.read_bytes() == b"old"
    assert [p.name for p in dest.parent.iterdir()] == ["model.onnx"]

    digest, size = write_atomically(dest, [b"new ", b"bytes"])
    assert (digest, size, dest.read_bytes()) == (hashlib.sha256(b"new bytes").hexdigest(), 9, b"new bytes")


def test_the_temp_file_namespace_is_not_a_key(tmp_path: Path) -> None:
    store = FileArtifactStore(tmp_path.as_uri())
    with pytest.raises(InvalidKey, match="reserved"):
        store.put(f"a/{TEMP_PREFIX}x", b"")
    (tmp_path / f"{TEMP_PREFIX}abandoned").write_bytes(b"partial")
    assert list(store.list()) == []


def test_file_store_needs_an_absolute_local_root() -> None:
    for root in ("file://relative/dir", "file://otherhost/srv/a", "file:///srv/a?x=1"):
        with pytest.raises(ArtifactError):
            FileArtifactStore(root)


def test_file_store_cannot_hold_a_file_and_a_folder_of_one_name(tmp_path: Path) -> None:
    store = FileArtifactStore(tmp_path.as_uri())
    store.put("a", b"file")
    with pytest.raises(ArtifactError, match="share a name"):
        store.put("a/b", b"nested")


def test_the_registry_maps_schemes_to_factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schemes, "_factories", dict(schemes._factories))
    assert registered_schemes() == ["file", "s3"]
    opened: list[str] = []

    def memory_factory(root_uri: str, settings: object) -> FileArtifactStore:
        opened.append(root_uri)
        return FileArtifactStore(tmp_path.as_uri())

    register_store("MEM", memory_factory)
    assert isinstance(open_store("mem://anything"), FileArtifactStore)
    assert opened == ["mem://anything"]
    with pytest.raises(ArtifactError, match=r"known schemes: file://, mem://, s3://"):
        open_store("gs://bucket")
