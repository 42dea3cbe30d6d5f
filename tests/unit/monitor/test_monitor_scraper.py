"""Target discovery through the deployer's deployments, and scrape rounds that survive failures."""

from __future__ import annotations

import httpx
from prometheus_client import CollectorRegistry, generate_latest

from gallery_deployer.modelserver.metrics import ServingMetrics
from gallery_monitor.scraper import Scraper, Target
from gallery_monitor.series import SeriesBook

DEPLOYER = "http://deployer:8004"
GATEWAY = "http://gateway:8080"


class Cluster:
    """What the scraper talks to: a deployer listing two replicas of iris:3, the replicas and a gateway."""

    def __init__(self) -> None:
        self.deployer_up = True
        self.broken: set[str] = set()
        self.registries = {url: CollectorRegistry() for url in ("http://10.0.0.1:9001", "http://10.0.0.2:9001")}
        self.servers = {url: ServingMetrics("iris", "3", "fp32", r) for url, r in self.registries.items()}
        self.clock = 1000.0

    def handle(self, request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        if base == DEPLOYER:
            if not self.deployer_up:
                raise httpx.ConnectError("connection refused")
            # the first replica listed twice (once with a trailing slash) is scraped once
            endpoints = [*self.registries, self.url(0) + "/"]
            deployments = [{"model": "iris", "version": 3, "endpoints": endpoints}]
            return httpx.Response(200, json=deployments)
        if base in self.broken:
            return httpx.Response(500, text="<html>broken</html>")
        if base == GATEWAY:
            return httpx.Response(200, text="# nothing about models here\n")
        return httpx.Response(200, content=generate_latest(self.registries[base]))

    def url(self, i: int) -> str:
        return list(self.registries)[i]

    def scraper(self, series: SeriesBook) -> Scraper:
        client = httpx.AsyncClient(transport=httpx.MockTransport(self.handle))
        return Scraper(
            series, client, interval_s=5, timeout_s=1, deployer_url=DEPLOYER, gateway_url=GATEWAY,
            extra_targets=(GATEWAY,), clock=lambda: self.clock,
        )  # fmt: skip


async def test_model_servers_are_found_through_the_deployer_and_summed() -> None:
    cluster = Cluster()
    series = SeriesBook(900, 5)
    scraper = cluster.scraper(series)
    targets = await scraper.targets()
    assert targets == [
        Target(cluster.url(0), "model_server"), Target(cluster.url(1), "model_server"), Target(GATEWAY, "gateway"),
    ]  # fmt: skip
    await scraper.scrape_round()
    for server in cluster.servers.values():
        for _ in range(25):
            server.request("ok", 0.004)
    cluster.clock += 5
    pages = await scraper.scrape_round()
    assert all(page is not None for page in pages.values())
    [figures] = series.figures("iris", 60, cluster.clock)
    assert figures.requests == 50 and figures.rps == 10


async def test_a_failing_replica_and_a_silent_deployer_do_not_lose_counts() -> None:
    cluster = Cluster()
    series = SeriesBook(900, 5)
    scraper = cluster.scraper(series)
    await scraper.scrape_round()
    cluster.broken.add(cluster.url(1))
    cluster.deployer_up = False
    for server in cluster.servers.values():
        for _ in range(10):
            server.request("ok", 0.004)
    cluster.clock += 5
    pages = await scraper.scrape_round()
    assert pages[cluster.url(1)] is None and pages[cluster.url(0)] is not None  # the last known targets
    assert series.figures("iris", 60, cluster.clock)[0].requests == 10
    cluster.broken.clear()
    cluster.clock += 5
    await scraper.scrape_round()
    # the replica that failed a round reports what it served meanwhile in the next one
    assert series.figures("iris", 60, cluster.clock)[0].requests == 20
