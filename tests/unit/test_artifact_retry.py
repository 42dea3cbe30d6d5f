"""Retries of transient S3 failures, through a small in-memory fake of the S3 client the store uses."""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO

import pytest
import urllib3.exceptions
from minio.error import S3Error, ServerError

from gallery_common.artifacts import RetryPolicy, S3ArtifactStore, is_transient_s3_error
from gallery_common.errors import ArtifactNotFound, IntegrityError, Unavailable


def s3_error(code: str, status: int) -> S3Error:
    return S3Error(SimpleNamespace(status=status), code, f"{code} message", "/b/k", "req", "host")  # type: ignore[arg-type]


class FakeResponse(io.BytesIO):
    """An object body; `fail_after` bytes into it the connection drops."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        super().__init__(data)
        self.fail_after = fail_after
        self.released = False

    def stream(self, amt: int) -> Iterator[bytes]:
        while chunk := self.read(min(amt, 4)):
            if self.fail_after is not None and self.tell() > self.fail_after:
                raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead")
            yield chunk

    def release_conn(self) -> None:
        self.released = True


class FakeS3:
    """The S3Client surface over a dict; `failures[op]` queues errors the next calls of `op` raise."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.buckets: set[str] = set()
        self.failures: dict[str, list[BaseException]] = {}
        self.calls: Counter[str] = Counter()
        self.responses: list[FakeResponse] = []
        self.list_starts: list[str | None] = []
        self.drop_get_after: int | None = None
        self.drop_list_after: int | None = None

    def _call(self, op: str) -> None:
        self.calls[op] += 1
        queued = self.failures.get(op)
        if queued:
            raise queued.pop(0)

    def bucket_exists(self, bucket_name: str) -> bool:
        self._call("bucket_exists")
        return bucket_name in self.buckets

    def make_bucket(self, bucket_name: str, location: str | None = None) -> None:
        self._call("make_bucket")
        self.buckets.add(bucket_name)

    def put_object(
        self,
        bucket_name: str,
        object_name: str,
        data: BinaryIO,
        length: int,
        content_type: str = "application/octet-stream",
        *,
        part_size: int = 0,
        num_parallel_uploads: int = 3,
    ) -> None:
        first_part = data.read(3)  # an upload that fails part way has consumed part of the source
        self._call("put_object")
        self.objects[object_name] = first_part + data.read()

    def get_object(self, bucket_name: str, object_name: str) -> FakeResponse:
        self._call("get_object")
        if object_name not in self.objects:
            raise s3_error("NoSuchKey", 404)
        response = FakeResponse(self.objects[object_name], self.drop_get_after)
        self.drop_get_after = None
        self.responses.append(response)
        return response

    def stat_object(self, bucket_name: str, object_name: str) -> Any:
        self._call("stat_object")
        if object_name not in self.objects:
            raise s3_error("NoSuchKey", 404)
        return SimpleNamespace(size=len(self.objects[object_name]))

    def remove_object(self, bucket_name: str, object_name: str) -> None:
        self._call("remove_object")
        self.objects.pop(object_name, None)

    def list_objects(
        self, bucket_name: str, prefix: str | None = None, recursive: bool = False, start_after: str | None = None
    ) -> Iterator[Any]:
        self.list_starts.append(start_after)
        names = [n for n in sorted(self.objects) if n.startswith(prefix or "") and (start_after or "") < n]
        for index, name in enumerate(names):
            if index == self.drop_list_after:
                self.drop_list_after = None
                raise urllib3.exceptions.ProtocolError("Connection broken")
            yield SimpleNamespace(object_name=name, size=len(self.objects[name]), is_dir=False)


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def fake() -> FakeS3:
    return FakeS3()


@pytest.fixture
def store(fake: FakeS3, sleeps: list[float]) -> S3ArtifactStore:
    return S3ArtifactStore("s3://bucket/pre", client=fake, retry=RetryPolicy(attempts=3, sleep=sleeps.append))


def flaky(errors: list[BaseException], result: str = "done") -> tuple[Counter[str], Any]:
    calls: Counter[str] = Counter()

    def operation() -> str:
        calls["n"] += 1
        if errors:
            raise errors.pop(0)
        return result

    return calls, operation


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (s3_error("SlowDown", 503), True),
        (s3_error("InternalError", 500), True),
        (s3_error("SomethingNew", 502), True),
        (s3_error("RequestTimeout", 400), True),
        (ServerError("bad gateway", 502), True),
        (urllib3.exceptions.ProtocolError("reset"), True),
        (urllib3.exceptions.MaxRetryError(None, "/b", "too many 503 error responses"), True),  # type: ignore[arg-type]
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (s3_error("NoSuchKey", 404), False),
        (s3_error("NoSuchBucket", 404), False),
        (s3_error("AccessDenied", 403), False),
        (ServerError("not implemented", 501), False),
        (urllib3.exceptions.LocationValueError("no host"), False),
        (IntegrityError("corrupt"), False),
        (ValueError("bug"), False),
    ],
)
def test_transient_errors_are_told_from_final_ones(exc: BaseException, transient: bool) -> None:
    assert is_transient_s3_error(exc) is transient


def test_a_transient_failure_is_retried_with_growing_delays(sleeps: list[float]) -> None:
    calls, operation = flaky([s3_error("SlowDown", 503), urllib3.exceptions.ProtocolError("reset")])
    policy = RetryPolicy(attempts=4, base_delay=0.2, sleep=sleeps.append)
    assert policy.call(operation) == "done"
    assert calls["n"] == 3
    assert 0.1 <= sleeps[0] <= 0.2 and 0.2 <= sleeps[1] <= 0.4


def test_retrying_stops_after_the_attempts_and_raises_the_last_error(sleeps: list[float]) -> None:
    last = s3_error("InternalError", 500)
    calls, operation = flaky([s3_error("SlowDown", 503), s3_error("SlowDown", 503), last])
    with pytest.raises(S3Error) as caught:
        RetryPolicy(attempts=3, sleep=sleeps.append).call(operation)
    assert caught.value is last and calls["n"] == 3 and len(sleeps) == 2


@pytest.mark.parametrize("exc", [s3_error("NoSuchKey", 404), IntegrityError("corrupt"), ValueError("bug")])
def test_final_errors_are_not_retried(exc: BaseException, sleeps: list[float]) -> None:
    calls, operation = flaky([exc])
    with pytest.raises(type(exc)):
        RetryPolicy(sleep=sleeps.append).call(operation)
    assert calls["n"] == 1 and sleeps == []


def test_a_put_that_fails_part_way_is_retried_from_the_start(store: S3ArtifactStore, fake: FakeS3) -> None:
    fake.failures["put_object"] = [s3_error("SlowDown", 503)]
    data = b"weights that must be hashed once"
    ref = store.put("m/w.bin", data)
    # The digest covers the bytes stored, not the partial first attempt as well.
    assert (ref.sha256, ref.size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert fake.objects["pre/m/w.bin"] == data
    assert fake.calls["put_object"] == 2 and fake.calls["make_bucket"] == 1


def test_a_stream_that_cannot_be_rewound_is_not_retried(store: S3ArtifactStore, fake: FakeS3) -> None:
    class Pipe:
        def __init__(self) -> None:
            self._data = io.BytesIO(b"one-shot stream")

        def read(self, size: int = -1) -> bytes:
            return self._data.read(size)

    fake.failures["put_object"] = [s3_error("SlowDown", 503)]
    with pytest.raises(Unavailable, match=r"s3://bucket/pre/m/w\.bin"):
        store.put("m/w.bin", Pipe())  # type: ignore[arg-type]
    assert fake.calls["put_object"] == 1


def test_the_bucket_is_created_once_even_if_another_service_won_the_race(store: S3ArtifactStore, fake: FakeS3) -> None:
    fake.failures["make_bucket"] = [s3_error("BucketAlreadyOwnedByYou", 409)]
    store.put("a", b"1")
    fake.buckets.add("bucket")
    store.put("b", b"2")
    assert fake.calls["bucket_exists"] == 1 and fake.calls["make_bucket"] == 1


def test_a_dropped_download_starts_over_and_releases_every_connection(
    store: S3ArtifactStore, fake: FakeS3, tmp_path: Path
) -> None:
    data = b"0123456789" * 5
    ref = store.put("m/w.bin", data)
    fake.failures["get_object"] = [urllib3.exceptions.NewConnectionError(None, "refused")]  # type: ignore[arg-type]
    fake.drop_get_after = 20
    dest = store.download(ref.uri, tmp_path / "w.bin", sha256=ref.sha256)
    assert dest.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["w.bin"]
    assert fake.calls["get_object"] == 3
    assert all(r.closed and r.released for r in fake.responses)


def test_a_missing_object_fails_at_once(store: S3ArtifactStore, fake: FakeS3, sleeps: list[float]) -> None:
    with pytest.raises(ArtifactNotFound, match="s3://bucket/pre/nope"):
        store.get("nope")
    assert fake.calls["get_object"] == 1 and sleeps == []
    assert store.exists("nope") is False


def test_a_store_that_stays_down_is_unavailable(store: S3ArtifactStore, fake: FakeS3, sleeps: list[float]) -> None:
    fake.failures["stat_object"] = [s3_error("SlowDown", 503) for _ in range(5)]
    with pytest.raises(Unavailable) as caught:
        store.exists("k")
    assert caught.value.status_code == 503 and "SlowDown" in caught.value.message
    assert fake.calls["stat_object"] == 3 and len(sleeps) == 2


def test_a_listing_that_fails_part_way_resumes_without_repeats(store: S3ArtifactStore, fake: FakeS3) -> None:
    for key in ("a", "b", "c", "d"):
        store.put(key, key.encode())
    fake.drop_list_after = 2
    assert [info.key for info in store.list()] == ["a", "b", "c", "d"]
    assert fake.list_starts == [None, "pre/b"]
