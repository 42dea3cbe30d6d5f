"""Route propagation across gateway replicas: from the deployer's writer storing a model's routes in the
JetStream KV bucket `routes` until every gateway replica routes by them.

Starts nats-server with the stack's NATS users (as `gallery up` runs it) and N gateway processes
(`python -m gallery_common.serve gateway`, each its own snapshot file), then changes one model's route
`--changes` times as the deployer does (`GatewayRoutes` over `RoutesBucket`, connected as the deployer's
user) and polls each gateway's `/admin/routes/{model}` every 2 ms until it names the new backend.
Prints p50 / p99 / max of the slowest replica per change against the 200 ms target.

    .venv/bin/python bench/routes.py [--gateways 2] [--changes 200] [--strict]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from gallery_cli.stack import stack_authorization
from gallery_common import telemetry
from gallery_common.bus import EventBus
from gallery_common.nats_auth import NatsCredentials, ensure_passwords
from gallery_common.nats_server import EmbeddedNats
from gallery_common.routes_kv import RoutesBucket
from gallery_deployer.deployer.routing import GatewayRoutes
from gallery_deployer.gateway.routes import Backend, ModelRoute

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "e2e")]

from lifecycle_stack import LifecycleStack  # noqa: E402

TARGET_S = 0.2
MODEL = "bench.routes"
POLL_S = 0.002


def route(tag: str) -> ModelRoute:
    return ModelRoute(backends=[Backend(id=tag, url="http://10.0.0.1:8500", version="1")])


async def routed_to(client: httpx.AsyncClient, gateway: str, tag: str, start: float) -> float:
    """Seconds from `start` until `gateway` routes MODEL to backend `tag`."""
    while True:
        answer = await client.get(f"{gateway}/admin/routes/{MODEL}")
        if answer.status_code == 200 and answer.json()["backends"][0]["id"] == tag:
            return time.perf_counter() - start
        if time.perf_counter() - start > 30:
            raise RuntimeError(f"{gateway} did not route {MODEL} to {tag} within 30 s")
        await asyncio.sleep(POLL_S)


async def measure(home: Path, nats_url: str, gateways: list[str], changes: int) -> list[float]:
    credentials = NatsCredentials("deployer", ensure_passwords(home, ["deployer"])["deployer"])
    bus = await EventBus(nats_url, "bench-deployer", credentials=credentials).connect(ensure_streams=False)
    try:
        routes = GatewayRoutes(await RoutesBucket.open(bus))
        async with httpx.AsyncClient(timeout=5) as client:
            for gateway in gateways:  # each replica follows the bucket before the clock starts
                while not (await client.get(f"{gateway}/admin/routing")).json().get("following"):
                    await asyncio.sleep(0.05)
            await routes.put(MODEL, route("warmup"))
            await asyncio.gather(*(routed_to(client, g, "warmup", time.perf_counter()) for g in gateways))
            slowest = []
            for i in range(changes):
                tag = f"v{i}"
                start = time.perf_counter()
                await routes.put(MODEL, route(tag))
                seen = await asyncio.gather(*(routed_to(client, g, tag, start) for g in gateways))
                slowest.append(max(seen))
            await routes.delete(MODEL)
            return slowest
    finally:
        await bus.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--strict", action="store_true", help="exit 1 when the max misses the target")
    args = parser.parse_args()
    telemetry.configure_logging("bench", level="WARNING")  # the writer logs each route it stores
    with tempfile.TemporaryDirectory(prefix="bench-routes-") as tmp:
        home = Path(tmp)
        with EmbeddedNats(home / "nats", authorization=stack_authorization(home, [])) as server:
            stack = LifecycleStack(home=home, nats_url=server.url)
            try:
                gateways = [
                    stack.start(
                        "gateway",
                        replica=f"-{k}",
                        GALLERY_SAMPLE_RATE="0",
                        GALLERY_ROUTES_FILE=str(home / f"gateway-{k}.json"),
                    ).url
                    for k in range(args.gateways)
                ]
                slowest = asyncio.run(measure(home, server.url, gateways, args.changes))
            finally:
                stack.stop()
    ordered = sorted(slowest)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] * 1000
    worst = ordered[-1] * 1000
    verdict = "meets" if worst <= TARGET_S * 1000 else "misses"
    print(
        f"route propagation to all of {args.gateways} gateway replicas ({args.changes} changes, polled every "
        f"{POLL_S * 1000:.0f} ms; {os.cpu_count()} CPUs): p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms "
        f"({verdict} the {TARGET_S * 1000:.0f} ms target)"
    )
    return 1 if args.strict and verdict == "misses" else 0


if __name__ == "__main__":
    sys.exit(main())
