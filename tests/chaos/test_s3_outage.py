"""The S3 server goes away in the middle of a large upload: the store retries, and no reader ever sees a
partial object under the artifact's key."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from chaos_figures import Figures
from tcp_proxy import TcpProxy
from waiting import wait_for

from gallery_common.artifacts import ArtifactStore, S3ArtifactStore
from gallery_common.artifacts.retry import RetryPolicy
from gallery_common.errors import Unavailable
from gallery_common.settings import GallerySettings

SIZE = 24 * 1024 * 1024  # three 8 MiB parts: a multipart upload
CUT_AFTER = 10 * 1024 * 1024  # bytes into the upload when the server goes away
KEY = "models/chaos/1/weights.safetensors"


def settings_for(endpoint: str, s3_server) -> GallerySettings:  # type: ignore[no-untyped-def]
    return GallerySettings(
        s3_endpoint=endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        s3_secure=False,
    )


@dataclass
class Watcher:
    """Reads the artifact's key straight from the server (not through the proxy) until told to stop."""

    store: ArtifactStore
    sizes_seen: set[int] = field(default_factory=set)
    reads: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.is_set():
            for info in self.store.list(KEY):
                if info.key == KEY:
                    self.sizes_seen.add(info.size)
            self.reads += 1
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()


@pytest.fixture
def proxied(s3_server) -> Iterator[tuple[TcpProxy, str]]:  # type: ignore[no-untyped-def]
    host, port = s3_server.endpoint.split(":")
    proxy = TcpProxy((host, int(port))).start()
    try:
        yield proxy, s3_server.new_bucket_uri("gallery")
    finally:
        proxy.stop()


def outage_during_put(proxy: TcpProxy, store: ArtifactStore, content: bytes, down_for: float) -> tuple[object, float]:
    """Put `content` while the server goes away `CUT_AFTER` bytes in for `down_for` s; (outcome, seconds the
    put took)."""
    outcome: list[object] = []
    started = time.monotonic()
    ended: list[float] = []

    def put() -> None:
        try:
            outcome.append(store.put(KEY, content))
        except Exception as exc:
            outcome.append(exc)
        ended.append(time.monotonic())

    uploading = threading.Thread(target=put)
    uploading.start()
    wait_for("the upload to get under way", lambda: proxy.sent >= CUT_AFTER or outcome, timeout=60, interval=0.005)
    proxy.stop()
    time.sleep(down_for)
    proxy.start()
    uploading.join(120)
    assert outcome, "the upload did not end within 120 s of the server's return"
    return outcome[0], ended[0] - started


def test_s3_server_stopped_during_a_large_upload(proxied, s3_server, figures: Figures) -> None:  # type: ignore[no-untyped-def]
    """the S3 server stopped during an artifact upload"""
    proxy, root = proxied
    retries: list[float] = []
    # the store's default policy, counting its waits
    policy = RetryPolicy(sleep=lambda seconds: (retries.append(seconds), time.sleep(seconds)))  # type: ignore[func-returns-value]
    store = S3ArtifactStore(root, settings_for(proxy.endpoint, s3_server), retry=policy)
    direct = S3ArtifactStore(root, settings_for(s3_server.endpoint, s3_server))
    content = os.urandom(SIZE)
    digest = hashlib.sha256(content).hexdigest()
    store.put("warm-up", b"x")  # the bucket exists before the cut
    watcher = Watcher(direct)
    watching = threading.Thread(target=watcher.run, daemon=True)
    watching.start()
    try:
        # a short outage: the store's own retries ride it out
        short_down = 1.0
        ref, short_seconds = outage_during_put(proxy, store, content, short_down)
        assert not isinstance(ref, BaseException), f"the upload failed across a {short_down} s outage: {ref!r}"
        short_retries = len(retries)
        assert direct.get(KEY, digest) == content

        # a long outage: past the retries, a clear Unavailable; nothing new under the key, the old one intact
        direct.delete(KEY)
        retries.clear()
        long_down = 15.0
        error, long_seconds = outage_during_put(proxy, store, content, long_down)
        assert isinstance(error, Unavailable), f"expected Unavailable, got {error!r}"
        assert "artifact store unavailable" in str(error)
        assert not direct.exists(KEY)
        again = store.put(KEY, content)  # what a redelivered job does once the server is back
        assert again.sha256 == digest
    finally:
        watcher.stop()
        watching.join(10)

    partial = {size for size in watcher.sizes_seen if size != SIZE}
    figures.update(
        artifact_mib=SIZE // (1024 * 1024),
        short_outage_s=short_down,
        retries=short_retries,
        upload_across_outage_s=round(short_seconds, 1),
        long_outage_s=long_down,
        long_outage_error=f"Unavailable after {len(retries)} retries, {long_seconds:.1f} s",
        reads_of_the_key=watcher.reads,
        partial_objects_seen=len(partial),
    )
    assert short_retries >= 1, "the outage did not reach the store (the cut came too late)"
    assert not partial, f"a reader saw a partial object: sizes {sorted(partial)}"
