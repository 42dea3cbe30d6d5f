"""A 3-node NATS cluster loses a node (kill -9): publishing and consuming go on, and so does a lifecycle
(train → gate → optimize and deploy) on services connected to the cluster, whose streams, job queues and
key-value buckets (routes, leaders) all have 3 replicas."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from chaos_figures import Figures
from lifecycle_stack import LifecycleStack
from nats.js import errors as js_errors
from nats_cluster import NatsCluster
from waiting import eventually, wait_for

from gallery_common.bus import DLQ_STREAM, EVENTS_STREAM, EventBus
from gallery_common.events import CloudEvent, ModelValidated
from gallery_common.leader import KvLeaderLock
from gallery_common.nats_auth import LEADERS_STREAM
from gallery_common.routes_kv import STREAM as ROUTES_STREAM
from gallery_common.work_queue import OPTIMIZE_JOBS, TRAIN_JOBS, WorkQueue

REPO = Path(__file__).resolve().parents[2]
GALLERY = Path(sys.executable).with_name("gallery")
TOTAL = 600
REPLICAS = 3


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    running = NatsCluster(tmp_path / "nats").start()
    try:
        yield running
    finally:
        running.stop()


async def stream_leader(bus: EventBus) -> str:
    """The node that leads MODEL_EVENTS (the one whose loss costs an election)."""
    info = await bus.js.stream_info(EVENTS_STREAM)
    assert info.cluster is not None and info.cluster.leader
    return info.cluster.leader


async def test_a_3_node_nats_cluster_loses_its_stream_leader_while_events_flow(
    cluster: NatsCluster, figures: Figures
) -> None:
    """a 3-node NATS cluster losing one node (kill -9): publish and consume"""
    deliveries: Counter[str] = Counter()
    acked: list[str] = []
    acked_at: list[float] = []

    async def handle(event: CloudEvent[Any]) -> None:
        deliveries[event.id] += 1

    async with (
        EventBus(cluster.url, "chaos-publisher", stream_replicas=REPLICAS, publish_deadline=60) as publisher,
        EventBus(cluster.url, "chaos-consumer", stream_replicas=REPLICAS) as consuming,
    ):
        consumer = consuming.consumer("chaos-cluster-worker", handle, ack_wait=2.0, batch=50)
        consumer.start()
        leader = await stream_leader(publisher)

        async def publish() -> None:
            for version in range(1, TOTAL + 1):
                acked.append((await publisher.publish(ModelValidated(model="chaos", version=version))).id)
                acked_at.append(time.monotonic())

        publishing = asyncio.create_task(publish())
        await eventually(lambda: len(acked) >= TOTAL // 3, timeout=60, what="a third of the events acked")
        killed = time.monotonic()
        acked_before = len(acked)
        cluster.kill(leader)
        await asyncio.wait_for(publishing, 120)
        # the longest a publish waited for its ack once the node was gone (the stream's leader election)
        after = [killed, *acked_at[acked_before:]]
        longest_stall = max(b - a for a, b in itertools.pairwise(after))
        await eventually(lambda: set(deliveries) >= set(acked), timeout=60, what="every acked event handled")
        caught_up = time.monotonic() - killed
        new_leader = await stream_leader(publisher)
        stored = (await publisher.js.stream_info(EVENTS_STREAM)).state.messages
        await consumer.stop()

    lost = len(set(acked) - set(deliveries))
    figures.update(
        nodes=len(cluster.nodes),
        replicas=REPLICAS,
        killed=f"{leader} (stream leader)",
        new_leader=new_leader,
        acked=len(acked),
        stored=stored,
        lost=lost,
        redelivered=sum(deliveries.values()) - len(deliveries),
        longest_publish_stall_s=round(longest_stall, 2),
        all_handled_after_kill_s=round(caught_up, 2),
    )
    assert new_leader != leader
    assert len(acked) == TOTAL and lost == 0 and stored == TOTAL


def verdict(registry: str, model: str) -> str | None:
    """The gate's verdict on version 1 (validated or rejected); None until it has one."""
    status = httpx.get(f"{registry}/api/v1/models/{model}/versions/1", timeout=10).json().get("status")
    return status if status in {"validated", "rejected"} else None


def deployed_in_production(stack: LifecycleStack, model: str) -> bool:
    answer = httpx.get(f"{stack.services['registry'].url}/api/v1/models/{model}/aliases/production", timeout=10)
    return answer.status_code == 200


# what the services keep on JetStream: the lifecycle streams, the job queues, the routes and the leaders
CLUSTERED = (EVENTS_STREAM, DLQ_STREAM, TRAIN_JOBS.stream, OPTIMIZE_JOBS.stream, ROUTES_STREAM, LEADERS_STREAM)


async def placement(bus: EventBus) -> dict[str, tuple[int, str | None, bool]]:
    """Each stream the services keep: its replicas, the node that leads it and whether its followers are
    current (not so for one just scaled from 1 to 3 until they have caught up)."""
    found = {}
    for stream in CLUSTERED:
        try:
            info = await bus.js.stream_info(stream)
        except js_errors.NotFoundError:  # not created yet
            found[stream] = (0, None, False)
            continue
        cluster = info.cluster
        current = cluster is not None and all(peer.current for peer in cluster.replicas or [])
        found[stream] = (info.config.num_replicas or 1, cluster.leader if cluster else None, current)
    return found


async def older_installation(url: str) -> None:
    """What a deployer run without GALLERY_STREAM_REPLICAS leaves: the leaders bucket on one node (the
    services started next with 3 replicas must bring it to 3)."""
    async with EventBus(url, "chaos-older") as bus:
        await KvLeaderLock(bus, "chaos", ttl_s=3.0).open()


def test_a_3_node_nats_cluster_loses_a_node_and_the_lifecycle_goes_on(
    cluster: NatsCluster, tmp_path: Path, figures: Figures
) -> None:
    """a 3-node NATS cluster losing one node (kill -9): train, validate, optimize, deploy"""
    stack = LifecycleStack(home=tmp_path / "home", nats_url=cluster.url)
    replicas = {"GALLERY_STREAM_REPLICAS": str(REPLICAS), "GALLERY_LEADER_TTL_S": "3"}
    try:
        asyncio.run(older_installation(cluster.url))
        started = time.monotonic()
        for name in ("registry", "trainer", "optimizer", "gateway", "deployer", "monitor"):
            stack.start(name, **replicas)

        async def look() -> dict[str, tuple[int, str | None, bool]]:
            async with EventBus(cluster.url, "chaos-probe") as bus:
                # a client without GALLERY_STREAM_REPLICAS (the CLI, a tool) keeps what is there
                await WorkQueue(bus, TRAIN_JOBS).ensure()
                return await placement(bus)

        # the services create the routes bucket and take leadership as they start; wait for both
        def placed() -> dict[str, tuple[int, str | None, bool]] | None:
            found = asyncio.run(look())
            return found if all(leader and current for _, leader, current in found.values()) else None

        before = wait_for("every stream placed, its followers current", placed, 60)
        stack_up = time.monotonic() - started
        assert {stream: n for stream, (n, _, _) in before.items()} == dict.fromkeys(CLUSTERED, REPLICAS), before
        # the node that leads the most of them goes
        led = Counter(leader for _, leader, _ in before.values())
        killed_node = led.most_common(1)[0][0]
        assert killed_node is not None
        cluster.kill(killed_node)
        killed = time.monotonic()
        result = subprocess.run(
            [str(GALLERY), "train", str(REPO / "examples" / "iris.yaml")],
            env=stack.env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        registry = stack.services["registry"].url
        status = wait_for(
            "iris v1 judged", lambda: verdict(registry, "iris-mlp"), timeout=180, ignore=(httpx.HTTPError,)
        )
        judged = time.monotonic() - killed
        assert status == "validated"
        wait_for("iris v1 in production", lambda: deployed_in_production(stack, "iris-mlp"), timeout=180)
        in_production = time.monotonic() - killed
        answer = httpx.post(
            f"{stack.services['gateway'].url}/v2/models/iris-mlp/infer",
            json={"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]},
            timeout=30,
        )
        optimized = wait_for(
            "iris v1 optimized",
            lambda: (
                httpx.get(f"{stack.services['optimizer'].url}/api/v1/optimize", params={"model": "iris-mlp"}).json()[0][
                    "status"
                ]
                in ("succeeded", "failed")
            ),
            timeout=180,
        )
        optimized_after = time.monotonic() - killed
        leaders = {
            name: httpx.get(f"{stack.services[name].url}/leader", timeout=5).json()["leader"]
            for name in ("deployer", "monitor")
        }
        after = asyncio.run(look())
        figures.update(
            nodes=len(cluster.nodes),
            killed=f"{killed_node} (leader of {led[killed_node]} of {len(CLUSTERED)} streams), before training",
            replicas_each=REPLICAS,
            services_up_s=round(stack_up, 1),
            validated_after_kill_s=round(judged, 1),
            in_production_after_kill_s=round(in_production, 1),
            optimized_after_kill_s=round(optimized_after, 1),
            inference_through_gateway=answer.status_code,
            leaders_after=sum(leaders.values()),
        )
        assert answer.status_code == 200, answer.text
        assert optimized and all(leaders.values()), leaders
        assert all(leader not in (None, killed_node) for _, leader, _ in after.values()), after
    finally:
        stack.stop()
