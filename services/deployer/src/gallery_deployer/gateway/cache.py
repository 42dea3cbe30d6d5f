"""Caches of inference answers: an in-memory LRU by default, Redis when `GALLERY_REDIS_URL` is set."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gallery_common.telemetry import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class CachedAnswer:
    """A backend's answer as the client must get it again, byte for byte.

    `header_length` is the answer's `Inference-Header-Content-Length` (Triton's binary tensors: how many
    leading bytes are JSON); without it a client cannot split a binary answer.
    """

    status: int
    content_type: str
    body: bytes
    header_length: int | None = None


class LruCache:
    """At most `size` entries, each valid for `ttl_s` seconds; the least recently used goes first."""

    def __init__(self, size: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._size = size
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, CachedAnswer]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> CachedAnswer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, answer = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return answer

    def put(self, key: str, answer: CachedAnswer) -> None:
        self._entries[key] = (self._clock() + self._ttl_s, answer)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


class ResponseCache(Protocol):
    async def get(self, key: str) -> CachedAnswer | None: ...

    async def put(self, key: str, answer: CachedAnswer) -> None: ...

    async def close(self) -> None: ...


class MemoryResponseCache:
    """The LRU behind the async interface the gateway uses."""

    def __init__(self, size: int, ttl_s: float) -> None:
        self.lru = LruCache(size, ttl_s)

    async def get(self, key: str) -> CachedAnswer | None:
        return self.lru.get(key)

    async def put(self, key: str, answer: CachedAnswer) -> None:
        self.lru.put(key, answer)

    async def close(self) -> None:
        return None


class RedisResponseCache:
    """Answers shared by every gateway replica, expiring after `ttl_s` in Redis itself.

    A Redis that cannot be reached counts as a miss: the cache must never fail a request.
    """

    # v2: the framing holds the binary-data header length; entries of the first framing are never read
    prefix = "modelgallery:gateway:v2:"

    def __init__(self, url: str, ttl_s: float) -> None:
        import redis.asyncio as redis

        self._redis = redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._ttl_ms = max(1, int(ttl_s * 1000))

    async def get(self, key: str) -> CachedAnswer | None:
        try:
            raw = await self._redis.get(self.prefix + key)
        except Exception as exc:
            log.warning("redis cache unavailable", error=str(exc))
            return None
        if not isinstance(raw, bytes):  # None: a miss (the client is not set to decode replies)
            return None
        try:
            status, content_type, header_length, body = raw.split(b"\n", 3)
            return CachedAnswer(int(status), content_type.decode(), body, int(header_length) if header_length else None)
        except ValueError:  # not an entry this code wrote: a miss, never a broken answer
            return None

    async def put(self, key: str, answer: CachedAnswer) -> None:
        length = b"" if answer.header_length is None else str(answer.header_length).encode()
        framed = b"%d\n%s\n%s\n" % (answer.status, answer.content_type.encode(), length) + answer.body
        try:
            await self._redis.set(self.prefix + key, framed, px=self._ttl_ms)
        except Exception as exc:
            log.warning("redis cache unavailable", error=str(exc))

    async def close(self) -> None:
        await self._redis.aclose()


def make_response_cache(redis_url: str | None, size: int, ttl_s: float) -> ResponseCache:
    if redis_url:
        return RedisResponseCache(redis_url, ttl_s)
    return MemoryResponseCache(size, ttl_s)
