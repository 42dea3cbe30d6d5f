"""The artifact store interface and what every implementation shares: keys, sources, digests, atomic writes."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, TypeAlias, runtime_checkable

from gallery_common.contracts.refs import ArtifactRef
from gallery_common.errors import ArtifactError, IntegrityError, InvalidKey, StorageFull
from gallery_common.telemetry import get_logger

from .partial_writes import sweep_dead_writers, temp_name

if TYPE_CHECKING:
    from gallery_common.settings import GallerySettings

CHUNK_SIZE = 1024 * 1024
SIZE_SETTING = "GALLERY_MAX_ARTIFACT_BYTES"
MAX_KEY_BYTES = 1024  # S3's limit; file:// keeps to it so a key is portable between stores

Source: TypeAlias = bytes | bytearray | memoryview | Path | BinaryIO
"""What `put` accepts: the content itself, a local file, or a binary stream read to its end."""

_URI_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
log = get_logger(__name__)

_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class ArtifactTooLarge(ArtifactError):
    """An artifact over the size a service fetches (GALLERY_MAX_ARTIFACT_BYTES); it is not read, or no further."""

    status_code = 413


@dataclass(frozen=True)
class ArtifactInfo:
    """One stored artifact as `list` reports it."""

    key: str
    size: int
    uri: str


@runtime_checkable
class ArtifactStore(Protocol):
    """Bytes under string keys below one root URI, every read checkable against a sha256.

    Keys are relative POSIX-style paths (`models/resnet/3/model.onnx`). Wherever a method takes
    `key_or_uri` it also accepts a full URI inside this store, as `put` returned it. Methods block:
    call them from a worker thread, not from an event loop.
    """

    @property
    def root_uri(self) -> str:
        """The URI every artifact of this store lives under (`file:///...` or `s3://bucket/prefix`)."""
        ...

    def put(self, key: str, source: Source, content_type: str | None = None) -> ArtifactRef:
        """Store `source` under `key`, replacing what was there; the digest is computed while streaming."""
        ...

    def get(self, key_or_uri: str, sha256: str | None = None) -> bytes:
        """The whole artifact in memory, checked against `sha256` when given.

        Every read (`get`, `download`, `verify`, `open`) refuses with ArtifactTooLarge an artifact stored
        over the store's size limit before fetching it, and stops one that grows past it while read.
        """
        ...

    def download(self, key_or_uri: str, dest: Path, sha256: str | None = None) -> Path:
        """Stream the artifact to `dest`, which appears only complete and (when `sha256` is given) verified."""
        ...

    def open(self, key_or_uri: str) -> AbstractContextManager[BinaryIO]:
        """A binary stream of the artifact; unverified, so use `download` or `get` before loading a model."""
        ...

    def exists(self, key_or_uri: str) -> bool:
        """Whether an artifact is stored under the key."""
        ...

    def delete(self, key_or_uri: str) -> None:
        """Remove the artifact; deleting a missing one is not an error, so retried handlers stay idempotent."""
        ...

    def list(self, prefix: str = "") -> Iterator[ArtifactInfo]:
        """Artifacts whose key starts with `prefix` (a plain string prefix, as in S3), in key order."""
        ...

    def uri_for(self, key: str) -> str:
        """The URI of `key` in this store."""
        ...

    def key_for(self, uri: str) -> str:
        """The key of a URI inside this store; InvalidKey for a URI outside its root."""
        ...

    def verify(self, key_or_uri: str, sha256: str) -> None:
        """Stream the artifact and raise IntegrityError unless its digest is `sha256`."""
        ...


def looks_like_uri(value: str) -> bool:
    return bool(_URI_LIKE.match(value))


def _key_problem(key: str) -> str | None:
    if not key:
        return "it is empty"
    if _CONTROL.search(key):
        return "it contains a NUL or control character"
    if "\\" in key:
        return "it contains a backslash"
    if key.startswith("/"):
        return "it is an absolute path"
    if looks_like_uri(key):
        return "it looks like a URI"
    try:
        if len(key.encode("utf-8")) > MAX_KEY_BYTES:
            return f"it is longer than {MAX_KEY_BYTES} bytes"
    except UnicodeEncodeError:
        return "it is not valid Unicode"
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            # An empty or "." segment would make two spellings of one file:// path; ".." escapes the root.
            return f"it has a {segment or 'empty'!r} path segment"
    return None


def validate_key(key: str) -> str:
    """Return `key` unchanged if it is a canonical relative key, else raise InvalidKey saying why."""
    if not isinstance(key, str):
        raise InvalidKey(f"artifact key must be a string, not {type(key).__name__}")
    problem = _key_problem(key)
    if problem:
        raise InvalidKey(f"invalid artifact key {key!r}: {problem}")
    return key


def validate_prefix(prefix: str) -> str:
    """Return a listing prefix unchanged: empty, or a key start that may end with '/'."""
    if prefix:
        validate_key(prefix.removesuffix("/"))
    return prefix


def relative_key(path: str, root: str) -> str | None:
    """The key of `path` below the root path `root` (both '/'-separated), or None when outside it."""
    root = root.rstrip("/") + "/"
    return path[len(root) :] if path.startswith(root) else None


def normalize_sha256(value: str) -> str:
    """A lowercase hex sha256, or ArtifactError for anything else (so a typo is not reported as corruption)."""
    digest = value.strip().lower() if isinstance(value, str) else ""
    if not _SHA256.match(digest):
        raise ArtifactError(f"not a sha256 hex digest: {value!r}")
    return digest


def check_digest(artifact: str, expected: str, actual: str) -> None:
    """Raise IntegrityError naming the artifact and both digests unless they match."""
    if expected != actual:
        raise IntegrityError(f"artifact {artifact} is corrupt: expected sha256 {expected}, got {actual}")


class HashingReader:
    """A binary stream that hashes and counts the bytes read through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if isinstance(data, bytearray | memoryview):
            data = bytes(data)
        elif not isinstance(data, bytes):
            raise TypeError(f"source must be a binary stream; read() returned {type(data).__name__}")
        self._hash.update(data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


def iter_chunks(stream: BinaryIO | HashingReader, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Read a stream to its end in chunks of at most `chunk_size` bytes."""
    while chunk := stream.read(chunk_size):
        yield chunk


def digest_chunks(chunks: Iterable[bytes]) -> tuple[str, int]:
    """The sha256 and total size of a sequence of chunks."""
    hasher = hashlib.sha256()
    size = 0
    for chunk in chunks:
        hasher.update(chunk)
        size += len(chunk)
    return hasher.hexdigest(), size


def size_limit(settings: GallerySettings | None, max_bytes: int | None) -> int:
    """The most bytes a store fetches: `max_bytes` if given, else the settings' (the environment's by default)."""
    if max_bytes is not None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        return max_bytes
    if settings is None:
        from gallery_common.settings import get_settings

        settings = get_settings()
    return settings.max_artifact_bytes


def describe_size(n: int) -> str:
    """`n` bytes for a reader: "3.0 GiB (3221225472 bytes)"."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit} ({n} bytes)"
    return f"{n} bytes"


def check_size(artifact: str, size: int | None, limit: int) -> None:
    """Refuse, before a byte is fetched, an artifact whose stored size is over `limit` (None: size unknown)."""
    if size is not None and size > limit:
        raise ArtifactTooLarge(
            f"artifact {artifact} is {describe_size(size)}, over the {describe_size(limit)} a service fetches "
            f"({SIZE_SETTING}); it was not fetched"
        )


def capped(chunks: Iterable[bytes], artifact: str, limit: int) -> Iterator[bytes]:
    """The chunks, stopped with ArtifactTooLarge the moment together they pass `limit` (an artifact that grows
    while it is read, or a size the store did not report)."""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise ArtifactTooLarge(
                f"artifact {artifact} grew past the {describe_size(limit)} a service fetches ({SIZE_SETTING}) "
                f"while it was fetched; stopped after {describe_size(total)}"
            )
        yield chunk


def read_verified(chunks: Iterable[bytes], artifact: str, sha256: str | None) -> bytes:
    """The chunks joined, checked against `sha256` when given."""
    hasher = hashlib.sha256()
    parts = []
    for chunk in chunks:
        hasher.update(chunk)
        parts.append(chunk)
    if sha256 is not None:
        check_digest(artifact, sha256, hasher.hexdigest())
    return b"".join(parts)


@dataclass
class OpenedSource:
    """A `put` source opened for reading: its stream, its length if known, and how to start it over."""

    stream: BinaryIO
    length: int | None
    rewind: Callable[[], object] | None


@contextlib.contextmanager
def open_source(source: Source) -> Iterator[OpenedSource]:
    """Open bytes, a Path or a binary stream uniformly; a stream is left open for its owner to close."""
    if isinstance(source, str):
        raise TypeError("pass a Path for a local file or bytes for content, not str")
    if isinstance(source, bytes | bytearray | memoryview):
        buffer = io.BytesIO(source)
        yield OpenedSource(buffer, memoryview(source).nbytes, lambda: buffer.seek(0))
    elif isinstance(source, os.PathLike):
        with open(source, "rb") as file:
            info = os.fstat(file.fileno())
            if stat.S_ISREG(info.st_mode):
                yield OpenedSource(file, info.st_size, lambda: file.seek(0))
            else:
                yield OpenedSource(file, None, None)  # a pipe or device: no size, no second read
    elif callable(getattr(source, "read", None)):
        rewind = None
        if _seekable(source):
            start = source.tell()
            rewind = lambda: source.seek(start)  # noqa: E731
        yield OpenedSource(source, None, rewind)
    else:
        raise TypeError(f"cannot store a {type(source).__name__}: pass bytes, a Path or a binary stream")


def _seekable(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable; some filesystems cannot open a directory, so this is best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(
    dest: Path, chunks: Iterable[bytes], *, artifact: str | None = None, sha256: str | None = None
) -> tuple[str, int]:
    """Write chunks to a temp file beside `dest`, fsync it, check `sha256`, then rename it over `dest`.

    Returns the digest and size written. On any failure (a digest mismatch included) the temp file is
    removed and `dest` keeps whatever it held before; a full disk or quota is StorageFull. Temp files that
    killed writers left in the folder are removed first (`partial_writes`).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    if swept := sweep_dead_writers(dest.parent):
        log.warning("removed partial writes of writers that were killed", folder=str(dest.parent), files=swept)
    temp = dest.parent / temp_name()
    hasher = hashlib.sha256()
    size = 0
    try:
        # O_EXCL and O_NOFOLLOW: never write through a link someone planted under the temp name.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise _storage_full(exc, artifact or str(dest), dest.parent, size) from exc
        raise
    try:
        with open(fd, "wb", closefd=True) as out:
            for chunk in chunks:
                hasher.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        digest = hasher.hexdigest()
        if sha256 is not None:
            check_digest(artifact or str(dest), sha256, digest)
        os.replace(temp, dest)
    except BaseException as exc:
        temp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            raise _storage_full(exc, artifact or str(dest), dest.parent, size) from exc
        raise
    fsync_dir(dest.parent)
    return digest, size


def _storage_full(exc: OSError, artifact: str, folder: Path, written: int) -> StorageFull:
    return StorageFull(
        f"cannot write {artifact}: {exc.strerror} in {folder} after {describe_size(written)}; "
        "the partial copy was removed and nothing was stored under its name"
    )
