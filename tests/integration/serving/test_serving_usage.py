"""Usage metering end to end: a model server process, a gateway process with two callers' tokens on a
nats-server with users, and the deployer's usage consumer and store on SQLite.

The gateway's `gallery_usage_*_total` counters match what each caller sent over REST and gRPC (rows are
the batch dimension), and the store's totals match it too after the gateway is restarted: its last
deltas go out at shutdown and nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from test_serving_modelserver import Server, put_artifact, start_server, tiny_model, wait_ready

from gallery_cli.stack import stack_authorization
from gallery_common.auth import identify
from gallery_common.bus import EventBus
from gallery_common.nats_auth import EVENTS_STREAM, NatsCredentials, ensure_passwords
from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port
from gallery_common.routes_kv import RoutesBucket
from gallery_common.settings import GallerySettings
from gallery_deployer.deployer.routing import GatewayRoutes
from gallery_deployer.gateway.routes import Backend, ModelRoute
from gallery_deployer.usage.consumer import DURABLE, usage_events
from gallery_deployer.usage.migrations import upgrade
from gallery_deployer.usage.records import UsageStore

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "e2e"))
from lifecycle_stack import LifecycleStack

TOKENS = {"alice": "alice-usage-token", "bob": "bob-usage-token"}
ADMIN = "usage-admin-token"
API_TOKENS = f"{TOKENS['alice']}:inference,{TOKENS['bob']}:inference,{ADMIN}:admin"
# the caller names the gateway gives these tokens (role and a digest of the token)
CALLERS = {
    who: identify(GallerySettings(api_tokens=API_TOKENS), f"Bearer {token}").name  # type: ignore[arg-type]
    for who, token in TOKENS.items()
}


def body(rows: int) -> dict[str, object]:
    data = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    return {"inputs": [{"name": "features", "shape": [rows, 4], "datatype": "FP32", "data": data.ravel().tolist()}]}


def usage_series(metrics: str, name: str, caller: str) -> float:
    pattern = rf'^{name}\{{[^}}]*caller="{re.escape(caller)}"[^}}]*model="tiny"[^}}]*version="1.0.0"[^}}]*\}} (\S+)$'
    found = re.search(pattern, metrics, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("usage")


@pytest.fixture(scope="module")
def model_server(home: Path) -> Iterator[Server]:
    server = start_server(put_artifact(home, "tiny/1.0.0/model.onnx", tiny_model()))
    try:
        wait_ready(server)
        yield server
    finally:
        assert server.stop() == 0


@pytest.fixture
def nats(home: Path, tmp_path: Path) -> Iterator[EmbeddedNats]:
    with EmbeddedNats(tmp_path / "nats", authorization=stack_authorization(home, [])) as server:
        yield server


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'deployer.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


async def connect(nats: EmbeddedNats, home: Path, user: str) -> EventBus:
    credentials = NatsCredentials(user, ensure_passwords(home, [user])[user])
    return await EventBus(nats.url, f"test-{user}", credentials=credentials).connect()


@pytest.fixture
async def deployer_bus(nats: EmbeddedNats, home: Path) -> AsyncIterator[EventBus]:
    bus = await connect(nats, home, "deployer")
    yield bus
    await bus.close()


def start_gateway(stack: LifecycleStack, grpc_port: int, report_s: float) -> str:
    return stack.start(
        "gateway",
        GALLERY_API_TOKENS=API_TOKENS,
        GALLERY_GRPC_PORT=str(grpc_port),
        GALLERY_SAMPLE_RATE="0",
        GALLERY_USAGE_REPORT_S=str(report_s),
    ).url


def send(gateway: str, grpc_address: str, sent: dict[str, list[int]], who: str, rows: int, over: str) -> None:
    """One request of `rows` rows from `who`; its rows noted in `sent` once it is answered."""
    if over == "rest":
        response = httpx.post(
            f"{gateway}/v2/models/tiny/infer",
            json=body(rows),
            headers={"authorization": f"Bearer {TOKENS[who]}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
    else:
        client = triton_grpc.InferenceServerClient(grpc_address)
        features = triton_grpc.InferInput("features", [rows, 4], "FP32")
        features.set_data_from_numpy(np.ones((rows, 4), np.float32))
        result = client.infer("tiny", [features], headers={"authorization": f"Bearer {TOKENS[who]}"})
        assert result.as_numpy("logits").shape == (rows, 3)
        client.close()
    sent[who].append(rows)


def stored_totals(store: UsageStore) -> dict[str, tuple[int, int]]:
    now = datetime.now(UTC)
    lines = store.usage(now - timedelta(hours=1), now + timedelta(minutes=1), "hour", model="tiny")
    totals: dict[str, tuple[int, int]] = {}
    for line in lines:
        requests, rows = totals.get(line.caller, (0, 0))
        totals[line.caller] = (requests + line.requests, rows + line.rows)
    return totals


async def until_stored(store: UsageStore, sent: dict[str, list[int]]) -> dict[str, tuple[int, int]]:
    """Wait until the store holds exactly the requests and rows of `sent` per caller; returns them."""
    expected = {CALLERS[who]: (len(rows), sum(rows)) for who, rows in sent.items()}
    deadline = time.monotonic() + 30
    while (found := await asyncio.to_thread(stored_totals, store)) != expected:
        assert time.monotonic() < deadline, f"stored {found}, sent {expected}"
        await asyncio.sleep(0.1)
    return expected


async def test_usage_counts_each_caller_and_survives_a_gateway_restart(
    home: Path, model_server: Server, nats: EmbeddedNats, deployer_bus: EventBus, engine: Engine
) -> None:
    routes = GatewayRoutes(await RoutesBucket.open(deployer_bus))
    await routes.put("tiny", ModelRoute(backends=[Backend(id="ms", url=model_server.url, version="1.0.0")]))
    store = UsageStore(engine)
    consumer = usage_events(store).consumer(deployer_bus)
    consumer.start()
    stack = LifecycleStack(home=home, nats_url=nats.url)
    grpc_port = free_port()
    sent: dict[str, list[int]] = {"alice": [], "bob": []}
    try:
        gateway = await asyncio.to_thread(start_gateway, stack, grpc_port, 0.5)
        grpc_address = f"127.0.0.1:{grpc_port}"
        plan = [
            ("alice", 2, "rest"),
            ("alice", 2, "rest"),
            ("bob", 5, "rest"),
            ("bob", 3, "grpc"),
            ("alice", 1, "grpc"),
        ]
        deadline = time.monotonic() + 30
        while True:  # the route reaches the gateway through the bucket
            probe = httpx.get(f"{gateway}/admin/routes/tiny", headers={"authorization": f"Bearer {ADMIN}"})
            if probe.status_code == 200:
                break
            assert time.monotonic() < deadline, probe.text
            await asyncio.sleep(0.05)
        for who, rows, over in plan:
            await asyncio.to_thread(send, gateway, grpc_address, sent, who, rows, over)
        refused = httpx.post(
            f"{gateway}/v2/models/tiny/infer",
            json={"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
            headers={"authorization": f"Bearer {TOKENS['alice']}"},
        )
        assert refused.status_code == 400, "a request the model refuses is not metered"

        metrics = httpx.get(f"{gateway}/metrics").text
        for who in ("alice", "bob"):
            caller = CALLERS[who]
            assert usage_series(metrics, "gallery_usage_requests_total", caller) == len(sent[who])
            assert usage_series(metrics, "gallery_usage_rows_total", caller) == sum(sent[who])
            assert usage_series(metrics, "gallery_usage_compute_seconds_total", caller) > 0

        await until_stored(store, sent)  # the periodic reports (every 0.5 s)

        # a restart: SIGTERM, then more traffic on a new process that reports only when it stops (its period
        # is a minute), so what it counted reaches the store by its report at shutdown alone
        first = stack.services.pop("gateway").process
        first.terminate()
        first.wait(20)  # uvicorn ends by raising SIGTERM again once it has shut down
        gateway = await asyncio.to_thread(start_gateway, stack, grpc_port, 60.0)
        for who, rows, over in [("alice", 4, "rest"), ("bob", 1, "grpc")]:
            await asyncio.to_thread(send, gateway, grpc_address, sent, who, rows, over)
        stack.services["gateway"].process.terminate()
        stack.services["gateway"].process.wait(20)
        expected = await until_stored(store, sent)
        # every report is acknowledged: nothing waits for a second application
        info = await deployer_bus.js.consumer_info(EVENTS_STREAM, DURABLE)
        assert info.num_pending == 0 and info.num_ack_pending == 0
        assert await asyncio.to_thread(stored_totals, store) == expected
    finally:
        await consumer.stop()
        stack.stop()
