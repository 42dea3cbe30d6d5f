"""`s3://` artifacts: objects in a bucket of MinIO or any S3 API, through the MinIO SDK."""

from __future__ import annotations

import contextlib
import io
import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar

import certifi
import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from gallery_common.contracts.refs import ArtifactRef
from gallery_common.errors import ArtifactError, ArtifactNotFound, GalleryError, InvalidKey, Unavailable
from gallery_common.settings import GallerySettings, get_settings

from .base import (
    CHUNK_SIZE,
    SIZE_SETTING,
    ArtifactInfo,
    ArtifactTooLarge,
    HashingReader,
    Source,
    capped,
    check_digest,
    check_size,
    describe_size,
    digest_chunks,
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
from .retry import RetryPolicy, is_transient_s3_error

T = TypeVar("T")

# Peak memory of an upload of unknown length is about (parallel_uploads + 4) parts, as the SDK copies
# a part while cutting it; 8 MiB parts cap such a stream at 80 GB (10,000 parts). A file's known
# length lets the SDK pick bigger parts.
DEFAULT_PART_SIZE = 8 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's smallest multipart part
MAX_PARTS = 10_000
DEFAULT_CONTENT_TYPE = "application/octet-stream"

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchObject", "NotFound", "ResourceNotFound"})
_DENIED = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "ExpiredToken"}
)
_S3_FAILURES = (MinioException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


class S3Client(Protocol):
    """The part of `minio.Minio` this store uses; tests pass a fake of it."""

    def bucket_exists(self, bucket_name: str) -> bool: ...

    def make_bucket(self, bucket_name: str, location: str | None = None) -> Any: ...

    def put_object(
        self,
        bucket_name: str,
        object_name: str,
        data: BinaryIO,
        length: int,
        content_type: str = DEFAULT_CONTENT_TYPE,
        *,
        part_size: int = 0,
        num_parallel_uploads: int = 3,
    ) -> Any: ...

    def get_object(self, bucket_name: str, object_name: str) -> Any: ...

    def stat_object(self, bucket_name: str, object_name: str) -> Any: ...

    def remove_object(self, bucket_name: str, object_name: str) -> Any: ...

    def list_objects(
        self, bucket_name: str, prefix: str | None = None, recursive: bool = False, start_after: str | None = None
    ) -> Iterator[Any]: ...


def minio_client(settings: GallerySettings) -> Minio:
    """A MinIO SDK client for the endpoint and credentials in `settings`."""
    endpoint, secure = settings.s3_endpoint.rstrip("/"), settings.s3_secure
    for scheme, is_secure in (("https://", True), ("http://", False)):
        if endpoint.startswith(scheme):
            endpoint, secure = endpoint.removeprefix(scheme), is_secure
    http = urllib3.PoolManager(
        # The SDK's default waits 5 minutes to connect; a dead endpoint should fail within the retries.
        timeout=urllib3.Timeout(connect=10, read=300),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        # One failed request (one part of a multipart upload) is retried here, so a hiccup does not
        # restart a whole upload; RetryPolicy then retries a whole operation that still fails.
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
    return Minio(
        endpoint,
        access_key=settings.s3_access_key.get_secret_value() or None,
        secret_key=settings.s3_secret_key.get_secret_value() or None,
        secure=secure,
        region=settings.s3_region or None,
        http_client=http,
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, S3Error):
        return f"{exc.code}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def translate_error(exc: BaseException, action: str, uri: str) -> GalleryError:
    """The domain error for an S3 failure that retrying did not fix."""
    if isinstance(exc, GalleryError):
        return exc
    if isinstance(exc, S3Error) and exc.code in _NOT_FOUND:
        return ArtifactNotFound(f"artifact not found: {uri}")
    if isinstance(exc, S3Error) and exc.code in _DENIED:
        return Unavailable(f"artifact store refused to {action} {uri}: {_describe(exc)}")
    if is_transient_s3_error(exc):
        return Unavailable(f"artifact store unavailable, could not {action} {uri}: {_describe(exc)}")
    return ArtifactError(f"could not {action} {uri}: {_describe(exc)}")


def _content_length(response: Any) -> int | None:
    """The object's size as the server declared it, if it did."""
    headers = getattr(response, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class _ObjectStream(io.RawIOBase):
    """An object's body as a raw stream whose read failures are domain errors, stopped past `limit` bytes."""

    def __init__(self, response: Any, uri: str, limit: int) -> None:
        self._response = response
        self._uri = uri
        self._limit = limit
        self._read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            count = int(self._response.readinto(buffer))
        except _S3_FAILURES as exc:
            raise translate_error(exc, "read", self._uri) from exc
        self._read += count
        if self._read > self._limit:
            raise ArtifactTooLarge(
                f"artifact {self._uri} grew past the {describe_size(self._limit)} a service fetches "
                f"({SIZE_SETTING}) while it was read; stopped after {describe_size(self._read)}"
            )
        return count


class S3ArtifactStore:
    """Artifacts as objects under `s3://bucket[/prefix]`; the bucket is created on the first put.

    Uploads stream in parts of `part_size` bytes, `parallel_uploads` at a time, so memory stays
    bounded by a few parts whatever the size; reads stream in 1 MiB chunks. Transient failures
    are retried per `retry`. Reads refuse an object over `max_bytes` (default: the settings'
    GALLERY_MAX_ARTIFACT_BYTES) with ArtifactTooLarge, from the size the server declares before
    the body is read, and stop a body that runs past it.
    """

    def __init__(
        self,
        root_uri: str,
        settings: GallerySettings | None = None,
        *,
        client: S3Client | None = None,
        retry: RetryPolicy | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        parallel_uploads: int = 2,
        max_bytes: int | None = None,
    ) -> None:
        bucket, _, prefix = root_uri.removeprefix("s3://").partition("/")
        prefix = prefix.strip("/")
        if not root_uri.startswith("s3://") or not _BUCKET.match(bucket):
            raise ArtifactError(f"not an s3://bucket[/prefix] root: {root_uri!r}")
        if prefix:
            try:
                validate_key(prefix)
            except InvalidKey as exc:
                raise ArtifactError(f"invalid s3 root {root_uri!r}: {exc.message}") from None
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes")
        if client is None:
            settings = settings or get_settings()
            client = minio_client(settings)
        self.max_bytes = size_limit(settings, max_bytes)
        self.bucket = bucket
        self._prefix = f"{prefix}/" if prefix else ""
        self._client = client
        self._region = settings.s3_region if settings else None
        self._retry = retry or RetryPolicy()
        self._part_size = part_size
        self._parallel_uploads = parallel_uploads
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3ArtifactStore({self.root_uri!r})"

    @property
    def root_uri(self) -> str:
        return f"s3://{self.bucket}/{self._prefix}".rstrip("/")

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._prefix}{validate_key(key)}"

    def key_for(self, uri: str) -> str:
        key = relative_key(uri, self.root_uri) if uri.startswith("s3://") else None
        if key is None:
            raise InvalidKey(f"{uri!r} is not inside the artifact store {self.root_uri}")
        return validate_key(key)

    def _locate(self, key_or_uri: str) -> tuple[str, str]:
        """The object name and URI of a key or URI."""
        key = self.key_for(key_or_uri) if looks_like_uri(key_or_uri) else validate_key(key_or_uri)
        return self._prefix + key, self.uri_for(key)

    def _run(
        self,
        action: str,
        uri: str,
        operation: Callable[[], T],
        *,
        retryable: bool = True,
        before_retry: Callable[[], object] | None = None,
    ) -> T:
        try:
            return self._retry.call(operation, name=f"{action} {uri}", retryable=retryable, before_retry=before_retry)
        except _S3_FAILURES as exc:
            raise translate_error(exc, action, uri) from exc

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        with self._bucket_lock:
            if self._bucket_ready:
                return

            def create() -> None:
                if self._client.bucket_exists(self.bucket):
                    return
                try:
                    self._client.make_bucket(self.bucket, self._region)
                except S3Error as exc:
                    # Another service created it first.
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

            self._run("create bucket", f"s3://{self.bucket}", create)
            self._bucket_ready = True

    @contextlib.contextmanager
    def _response(self, name: str) -> Iterator[Any]:
        response = self._client.get_object(self.bucket, name)
        try:
            yield response
        finally:
            response.close()
            response.release_conn()

    @contextlib.contextmanager
    def _body(self, name: str, uri: str) -> Iterator[Iterator[bytes]]:
        """The object's body in chunks: refused before it is read when its declared size is over the limit,
        stopped when it runs past it."""
        with self._response(name) as response:
            check_size(uri, _content_length(response), self.max_bytes)
            yield capped(response.stream(CHUNK_SIZE), uri, self.max_bytes)

    def put(self, key: str, source: Source, content_type: str | None = None) -> ArtifactRef:
        name, uri = self._locate(key)
        self._ensure_bucket()
        with open_source(source) as opened:
            length = -1 if opened.length is None else opened.length
            # Past 10,000 parts S3 refuses an upload; with a known length the SDK picks a bigger part.
            part_size = self._part_size if length < 0 or length <= self._part_size * MAX_PARTS else 0

            def upload() -> HashingReader:
                reader = HashingReader(opened.stream)  # fresh per attempt, so a retry hashes from the start
                self._client.put_object(
                    self.bucket,
                    name,
                    reader,  # type: ignore[arg-type]
                    length,
                    content_type or DEFAULT_CONTENT_TYPE,
                    part_size=part_size,
                    num_parallel_uploads=self._parallel_uploads,
                )
                return reader

            reader = self._run("put", uri, upload, retryable=opened.rewind is not None, before_retry=opened.rewind)
        return ArtifactRef(uri=uri, sha256=reader.sha256, size=reader.size)

    def get(self, key_or_uri: str, sha256: str | None = None) -> bytes:
        expected = normalize_sha256(sha256) if sha256 is not None else None
        name, uri = self._locate(key_or_uri)

        def read() -> bytes:
            with self._body(name, uri) as chunks:
                return read_verified(chunks, uri, expected)

        return self._run("get", uri, read)

    def download(self, key_or_uri: str, dest: Path, sha256: str | None = None) -> Path:
        expected = normalize_sha256(sha256) if sha256 is not None else None
        name, uri = self._locate(key_or_uri)
        dest = Path(dest)

        def fetch() -> None:
            with self._body(name, uri) as chunks:
                write_atomically(dest, chunks, artifact=uri, sha256=expected)

        self._run("download", uri, fetch)
        return dest

    def verify(self, key_or_uri: str, sha256: str) -> None:
        expected = normalize_sha256(sha256)
        name, uri = self._locate(key_or_uri)

        def digest() -> str:
            with self._body(name, uri) as chunks:
                return digest_chunks(chunks)[0]

        check_digest(uri, expected, self._run("verify", uri, digest))

    @contextlib.contextmanager
    def open(self, key_or_uri: str) -> Iterator[BinaryIO]:
        """The object's body as a buffered binary stream; the connection is released on exit."""
        name, uri = self._locate(key_or_uri)
        response = self._run("open", uri, lambda: self._client.get_object(self.bucket, name))
        try:
            check_size(uri, _content_length(response), self.max_bytes)
            with io.BufferedReader(_ObjectStream(response, uri, self.max_bytes)) as stream:
                yield stream  # type: ignore[misc]
        finally:
            response.close()
            response.release_conn()

    def exists(self, key_or_uri: str) -> bool:
        name, uri = self._locate(key_or_uri)
        try:
            self._run("stat", uri, lambda: self._client.stat_object(self.bucket, name))
        except ArtifactNotFound:
            return False
        return True

    def delete(self, key_or_uri: str) -> None:
        name, uri = self._locate(key_or_uri)
        with contextlib.suppress(ArtifactNotFound):  # the bucket was never created
            self._run("delete", uri, lambda: self._client.remove_object(self.bucket, name))

    def list(self, prefix: str = "") -> Iterator[ArtifactInfo]:
        full_prefix = self._prefix + validate_prefix(prefix)
        after: str | None = None
        failures = 0
        while True:
            try:
                # A listing that fails part way resumes after the last key it yielded.
                objects = self._client.list_objects(self.bucket, prefix=full_prefix, recursive=True, start_after=after)
                for obj in objects:
                    after = obj.object_name
                    info = self._info(obj)
                    if info is not None:
                        yield info
                return
            except _S3_FAILURES as exc:
                if isinstance(exc, S3Error) and exc.code == "NoSuchBucket":
                    return
                failures += 1
                if not self._retry.should_retry(failures, exc):
                    raise translate_error(exc, "list", self.root_uri) from exc
                self._retry.wait(failures, exc, f"list {self.root_uri}/{prefix}")

    def _info(self, obj: Any) -> ArtifactInfo | None:
        name = obj.object_name or ""
        if obj.is_dir or not name.startswith(self._prefix):
            return None
        key = name[len(self._prefix) :]
        try:
            validate_key(key)
        except InvalidKey:
            return None  # an object written by another tool under a name no key can have
        return ArtifactInfo(key=key, size=int(obj.size or 0), uri=self.uri_for(key))
