"""`file://` artifacts: a directory tree on a local filesystem, the embedded default."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from gallery_common.contracts.refs import ArtifactRef
from gallery_common.errors import ArtifactError, ArtifactNotFound, InvalidKey
from gallery_common.settings import GallerySettings

from .base import (
    ArtifactInfo,
    Source,
    capped,
    check_digest,
    check_size,
    digest_chunks,
    iter_chunks,
    looks_like_uri,
    normalize_sha256,
    open_source,
    read_verified,
    relative_key,
    size_limit,
    validate_key,
    validate_prefix,
    write_atomically,
)
from .partial_writes import TEMP_PREFIX


class FileArtifactStore:
    """Artifacts as files under one root directory, written atomically (temp file, fsync, rename).

    A key never reaches outside the root: `..`, absolute paths and symlinks that resolve outside
    the root are refused with InvalidKey. Reads refuse an artifact over `max_bytes` (default: the
    settings' GALLERY_MAX_ARTIFACT_BYTES) with ArtifactTooLarge.
    """

    def __init__(self, root_uri: str, settings: GallerySettings | None = None, *, max_bytes: int | None = None) -> None:
        parts = urlsplit(root_uri)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise ArtifactError(f"not a local file:// root: {root_uri!r}")
        given = Path(unquote(parts.path))
        if not given.is_absolute():
            raise ArtifactError(f"a file:// root needs an absolute path: {root_uri!r}")
        given.mkdir(parents=True, exist_ok=True)
        self._given_root = given
        # Containment is checked against the real path, so a root reached through a symlink still works.
        self._root = given.resolve()
        self.max_bytes = size_limit(settings, max_bytes)

    def __repr__(self) -> str:
        return f"FileArtifactStore({self.root_uri!r})"

    @property
    def root_uri(self) -> str:
        return self._root.as_uri()

    def uri_for(self, key: str) -> str:
        return (self._root / validate_key(key)).as_uri()

    def key_for(self, uri: str) -> str:
        parts = urlsplit(uri)
        if parts.scheme == "file" and parts.netloc in ("", "localhost") and not (parts.query or parts.fragment):
            path = unquote(parts.path)
            for root in (self._root, self._given_root):
                key = relative_key(path, str(root))
                if key is not None:
                    return validate_key(key)
        raise InvalidKey(f"{uri!r} is not inside the artifact store {self.root_uri}")

    def _key(self, key_or_uri: str) -> str:
        return self.key_for(key_or_uri) if looks_like_uri(key_or_uri) else validate_key(key_or_uri)

    def _path(self, key_or_uri: str) -> tuple[Path, str]:
        """The file of a key, after checking that following its symlinks stays under the root."""
        key = self._key(key_or_uri)
        if any(segment.startswith(TEMP_PREFIX) for segment in key.split("/")):
            raise InvalidKey(f"invalid artifact key {key!r}: {TEMP_PREFIX}* names are reserved for partial writes")
        path = self._root / key
        try:
            real = path.resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise InvalidKey(f"invalid artifact key {key!r}: {exc}") from None
        if not real.is_relative_to(self._root):
            raise InvalidKey(f"invalid artifact key {key!r}: it resolves outside the store root")
        return path, path.as_uri()

    def put(self, key: str, source: Source, content_type: str | None = None) -> ArtifactRef:
        """Store `source` under `key`; `content_type` is not kept on a filesystem."""
        path, uri = self._path(key)
        with open_source(source) as opened:
            try:
                digest, size = write_atomically(path, iter_chunks(opened.stream), artifact=uri)
            except (NotADirectoryError, FileExistsError, IsADirectoryError) as exc:
                # S3 can hold both `a` and `a/b`; a directory tree cannot.
                raise ArtifactError(f"cannot store {key!r}: a file and a folder would share a name ({exc})") from None
        return ArtifactRef(uri=uri, sha256=digest, size=size)

    @contextlib.contextmanager
    def open(self, key_or_uri: str) -> Iterator[BinaryIO]:
        """The artifact's file opened for binary reading."""
        with self._open(*self._path(key_or_uri)) as file:
            yield file

    @contextlib.contextmanager
    def _open(self, path: Path, uri: str) -> Iterator[BinaryIO]:
        try:
            file = open(path, "rb")  # noqa: SIM115 - closed below, after the caller's block
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ArtifactNotFound(f"artifact not found: {uri}") from None
        with file:
            # the size of the file opened, not of the path looked at: it cannot be swapped in between
            check_size(uri, os.fstat(file.fileno()).st_size, self.max_bytes)
            yield file

    def _chunks(self, stream: BinaryIO, uri: str) -> Iterator[bytes]:
        return capped(iter_chunks(stream), uri, self.max_bytes)

    def get(self, key_or_uri: str, sha256: str | None = None) -> bytes:
        expected = normalize_sha256(sha256) if sha256 is not None else None
        path, uri = self._path(key_or_uri)
        with self._open(path, uri) as stream:
            return read_verified(self._chunks(stream, uri), uri, expected)

    def download(self, key_or_uri: str, dest: Path, sha256: str | None = None) -> Path:
        expected = normalize_sha256(sha256) if sha256 is not None else None
        dest = Path(dest)
        path, uri = self._path(key_or_uri)
        with self._open(path, uri) as stream:
            write_atomically(dest, self._chunks(stream, uri), artifact=uri, sha256=expected)
        return dest

    def verify(self, key_or_uri: str, sha256: str) -> None:
        expected = normalize_sha256(sha256)
        path, uri = self._path(key_or_uri)
        with self._open(path, uri) as stream:
            actual, _ = digest_chunks(self._chunks(stream, uri))
        check_digest(uri, expected, actual)

    def exists(self, key_or_uri: str) -> bool:
        path, _ = self._path(key_or_uri)
        return path.is_file()

    def delete(self, key_or_uri: str) -> None:
        path, _ = self._path(key_or_uri)
        # Empty parent folders stay: pruning them would race with a concurrent put into the same folder.
        if not path.is_dir():
            path.unlink(missing_ok=True)

    def list(self, prefix: str = "") -> Iterator[ArtifactInfo]:
        prefix = validate_prefix(prefix)
        folder, _, name_start = prefix.rpartition("/")
        start = self._root / folder if folder else self._root
        try:
            if not start.resolve().is_relative_to(self._root):
                return
        except (OSError, RuntimeError):
            return
        yield from self._walk(start, f"{folder}/" if folder else "", name_start)

    def _walk(self, directory: Path, key_prefix: str, name_start: str = "") -> Iterator[ArtifactInfo]:
        try:
            entries = [e for e in os.scandir(directory) if e.name.startswith(name_start)]
        except (FileNotFoundError, NotADirectoryError):
            return
        # Sorting a folder as "name/" yields keys in the same (code point) order as an S3 listing.
        entries.sort(key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name)
        for entry in entries:
            key = key_prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), key + "/")
                continue
            if entry.name.startswith(TEMP_PREFIX) or (entry.is_symlink() and not self._inside(Path(entry.path))):
                continue
            try:
                validate_key(key)
                if not entry.is_file():
                    continue
                size = entry.stat().st_size
            except (InvalidKey, OSError):
                continue  # a file put there by hand under a name no key can have
            yield ArtifactInfo(key=key, size=size, uri=self.uri_for(key))

    def _inside(self, path: Path) -> bool:
        try:
            return path.resolve().is_relative_to(self._root)
        except (OSError, RuntimeError):
            return False
