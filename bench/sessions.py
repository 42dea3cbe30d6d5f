"""What a signed-in browser's session costs the Gallery per request, and a sign-in: reading the sealed
session from its NATS bucket (every request that carries the cookie) and writing a new one (a sign-in's
callback), against a real nats-server on this machine.

    .venv/bin/python bench/sessions.py [--rounds 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gallery_common.bus import EventBus
from gallery_common.nats_server import EmbeddedNats
from gallery_web.sessions import Session, SessionStore

# a session as an issuer's tokens make it: JWTs of about a kilobyte, a refresh token
ACCESS, ID_TOKEN, REFRESH = "a" * 1000, "i" * 1000, "r" * 43


def session() -> Session:
    now = time.time()
    return Session("oidc:ann", ACCESS, ID_TOKEN, now + 600, REFRESH, now + 43_200)


async def timed(call: Callable[[], Awaitable[Any]], rounds: int) -> tuple[float, float]:
    """p50 and p99 of `call` in milliseconds."""
    for _ in range(min(50, rounds)):
        await call()
    taken = []
    for _ in range(rounds):
        started = time.perf_counter()
        await call()
        taken.append((time.perf_counter() - started) * 1000)
    taken.sort()
    return taken[len(taken) // 2], taken[min(len(taken) - 1, len(taken) * 99 // 100)]


async def measure(url: str, rounds: int) -> list[tuple[str, float, float]]:
    async with EventBus(url, "bench-sessions") as bus:
        store = SessionStore(bus, max_age_s=43_200, max_bytes=256 * 1024**2)
        cookie = await store.open(session())
        return [
            ("read a session (each request)", *await timed(lambda: store.get(cookie), rounds)),
            ("open a session (a sign-in)", *await timed(lambda: store.open(session()), rounds // 4)),
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir, EmbeddedNats(Path(workdir) / "nats") as nats:
        rows = asyncio.run(measure(nats.url, args.rounds))
    print(f"{'sealed session in NATS KV':<32} {'p50 ms':>8} {'p99 ms':>8}")
    for name, p50, p99 in rows:
        print(f"{name:<32} {p50:>8.3f} {p99:>8.3f}")


if __name__ == "__main__":
    main()
