"""Gateway replicas share their routes through the routes bucket: two gateway processes on one real
nats-server (with its NATS users, as `gallery up` runs it) follow what the deployer's writer stores;
a gateway started with the bus down serves its snapshot and catches up when the bus returns."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn_thread import running

from gallery_cli.stack import stack_authorization
from gallery_common.bus import EventBus
from gallery_common.nats_auth import NatsCredentials, ensure_passwords
from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port
from gallery_common.routes_kv import RoutesBucket
from gallery_deployer.deployer.routing import GatewayRoutes
from gallery_deployer.gateway.routes import Backend, ModelRoute, RouteBook

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "e2e"))
from lifecycle_stack import LifecycleStack

CHANGES = 20
# The issue asks for 200 ms; this machine runs other suites beside this one (2 cores), so the test holds
# the max to a bound a loaded machine keeps and prints the figures; bench/routes.py measures the 200 ms.
PROPAGATION_BOUND_S = 1.0
MODEL = "iris.v2"  # a '.' in a name: one key, not two subject tokens


def route(tag: str, url: str = "http://10.0.0.1:8500") -> ModelRoute:
    return ModelRoute(backends=[Backend(id=tag, url=url, version="1")])


async def deployer_routes(url: str, home: Path) -> tuple[EventBus, GatewayRoutes]:
    """The deployer's writer, connected as the deployer's NATS user."""
    credentials = NatsCredentials("deployer", ensure_passwords(home, ["deployer"])["deployer"])
    bus = await EventBus(url, "test-deployer", credentials=credentials).connect(ensure_streams=False)
    return bus, GatewayRoutes(await RoutesBucket.open(bus))


def start_gateway(stack: LifecycleStack, name: str) -> str:
    """One more gateway process of `stack`, with its own snapshot file."""
    routes_file = str(stack.home / f"{name}.json")
    return stack.start("gateway", replica=f"-{name}", GALLERY_SAMPLE_RATE="0", GALLERY_ROUTES_FILE=routes_file).url


async def eventually(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        await asyncio.sleep(0.02)


async def routed_backend(client: httpx.AsyncClient, gateway: str, model: str) -> str | None:
    response = await client.get(f"{gateway}/admin/routes/{model}")
    return response.json()["backends"][0]["id"] if response.status_code == 200 else None


async def routing(client: httpx.AsyncClient, gateway: str) -> dict[str, object]:
    return dict((await client.get(f"{gateway}/admin/routing")).json())


def at_revision(client: httpx.AsyncClient, gateway: str, revision: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await routing(client, gateway))["revision"] == revision

    return check


async def seen_after(client: httpx.AsyncClient, gateway: str, tag: str, start: float) -> float:
    """Seconds from `start` until `gateway` routes MODEL to backend `tag` (polled every 2 ms)."""
    while await routed_backend(client, gateway, MODEL) != tag:
        if time.perf_counter() - start > 30:
            raise AssertionError(f"{gateway} never routed {MODEL} to {tag}")
        await asyncio.sleep(0.002)
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def stack(secured_home: Path, secured_nats: EmbeddedNats) -> Iterator[LifecycleStack]:
    """Two gateway processes on one nats-server (each test writes its own model)."""
    running_stack = LifecycleStack(home=secured_home, nats_url=secured_nats.url)
    yield running_stack
    running_stack.stop()


@pytest.fixture(scope="module")
def two_gateways(stack: LifecycleStack) -> tuple[str, str]:
    return start_gateway(stack, "one"), start_gateway(stack, "two")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as opened:
        yield opened


async def test_a_route_change_by_the_deployer_reaches_both_gateway_replicas(
    secured_home: Path, secured_nats: EmbeddedNats, two_gateways: tuple[str, str], client: httpx.AsyncClient
) -> None:
    gateways = two_gateways
    bus, routes = await deployer_routes(secured_nats.url, secured_home)
    try:
        for gateway in gateways:

            async def following(gateway: str = gateway) -> bool:
                return (await routing(client, gateway))["following"] is True

            await eventually(f"{gateway} follows the bucket", following)

        latencies = []
        for i in range(CHANGES):
            tag = f"v{i}"
            start = time.perf_counter()
            revision = await routes.put(MODEL, route(tag))
            seen = await asyncio.gather(*(seen_after(client, gateway, tag, start) for gateway in gateways))
            latencies.append(max(seen))
        assert all([(await routing(client, g))["revision"] == revision for g in gateways])
        # the same route again stores nothing new (a redelivered event makes no revision)
        assert await routes.put(MODEL, route(f"v{CHANGES - 1}")) == revision

        assert await routes.delete(MODEL)
        for gateway in gateways:

            async def forgotten(gateway: str = gateway) -> bool:
                return (await client.get(f"{gateway}/admin/routes/{MODEL}")).status_code == 404

            await eventually(f"{gateway} drops {MODEL} after its deletion", forgotten, 10)
            metrics = (await client.get(f"{gateway}/metrics")).text
            assert f"modelgallery_gateway_routes_revision {float(revision + 1)}" in metrics
        for name in ("one", "two"):
            snapshot = orjson.loads((secured_home / f"{name}.json").read_bytes())
            assert snapshot["revision"] == revision + 1 and MODEL not in snapshot["routes"]
    finally:
        await bus.close()

    p50, worst = statistics.median(latencies), max(latencies)
    figures = f"p50 {p50 * 1000:.1f} ms, max {worst * 1000:.1f} ms"
    print(f"\nroute propagation to both replicas over {CHANGES} changes: {figures}")
    assert worst < PROPAGATION_BOUND_S, figures


@pytest.fixture
def backend() -> Iterator[str]:
    """An OIP backend that answers every model's readiness."""

    async def ready(_: Request) -> Response:
        return Response(status_code=200)

    app = Starlette(routes=[Route("/v2/models/{model}/ready", ready)])
    with running(app) as served:
        yield f"http://127.0.0.1:{served.config.port}"


async def test_a_gateway_started_with_the_bus_down_serves_its_snapshot_and_catches_up_when_it_returns(
    tmp_path: Path, backend: str, client: httpx.AsyncClient
) -> None:
    home = tmp_path
    RouteBook(home / "alone.json").put("snap", route("from-snapshot", backend))
    nats = EmbeddedNats(home / "nats", port=free_port(), authorization=stack_authorization(home, []))
    stack = LifecycleStack(home=home, nats_url=nats.url)
    gateway = start_gateway(stack, "alone")  # nothing listens on its NATS port yet
    try:
        assert (await client.get(f"{gateway}/v2/models/snap/ready")).status_code == 200
        assert await routed_backend(client, gateway, "snap") == "from-snapshot"
        assert (await routing(client, gateway))["following"] is False

        nats.start()
        bus, routes = await deployer_routes(nats.url, home)
        try:
            await routes.put("snap", route("from-bucket", backend))
            late = await routes.put("late.model", route("late", backend))
            await eventually("the gateway takes in the bucket once NATS is up", at_revision(client, gateway, late))
            assert await routed_backend(client, gateway, "snap") == "from-bucket"
            assert await routed_backend(client, gateway, "late.model") == "late"
        finally:
            await bus.close()

        nats.stop()
        assert (await client.get(f"{gateway}/v2/models/late.model/ready")).status_code == 200  # bus down: serves
        nats.start()
        bus, routes = await deployer_routes(nats.url, home)
        try:
            assert await routes.delete("late.model")
            revision = await routes.put("snap", route("after-restart", backend))
            await eventually("the gateway catches up after NATS came back", at_revision(client, gateway, revision))
        finally:
            await bus.close()
        assert await routed_backend(client, gateway, "snap") == "after-restart"
        assert (await client.get(f"{gateway}/admin/routes/late.model")).status_code == 404
        # the restarted watch applies the changes before it marks itself synced: wait for that too

        async def following() -> bool:
            return (await routing(client, gateway))["following"] is True

        await eventually("the gateway follows the bucket again", following)
    finally:
        stack.stop()
        nats.stop()


async def test_an_operator_sets_a_route_on_every_replica_through_the_deployer(
    stack: LifecycleStack, two_gateways: tuple[str, str], client: httpx.AsyncClient
) -> None:
    model = "by-hand.v1"
    deployer = stack.start("deployer").url
    target = f"{deployer}/api/v1/routes/{model}"
    body = route("by-hand").model_dump(mode="json")
    put = await client.put(target, json=body)
    assert put.status_code == 200, put.text
    revision = put.json()["revision"]
    assert (await client.get(target)).json() == {**put.json(), "model": model}
    for gateway in two_gateways:
        await eventually(f"{gateway} takes the operator's route", at_revision(client, gateway, revision))
        assert await routed_backend(client, gateway, model) == "by-hand"

    # a gateway's own PUT changes that replica alone
    local = route("this-replica-only").model_dump(mode="json")
    assert (await client.put(f"{two_gateways[0]}/admin/routes/{model}", json=local)).status_code == 200
    assert await routed_backend(client, two_gateways[1], model) == "by-hand"

    assert (await client.delete(target)).status_code == 204
    for gateway in two_gateways:

        async def forgotten(gateway: str = gateway) -> bool:
            return (await client.get(f"{gateway}/admin/routes/{model}")).status_code == 404

        await eventually(f"{gateway} drops the route the operator deleted", forgotten, 10)
    assert (await client.delete(target)).status_code == 404
    refused = await client.put(f"{deployer}/api/v1/routes/{model}", json={"backends": []})
    assert refused.status_code == 422 and "at least one" in refused.json()["error"]
