"""Scrapes `/metrics` of every model server (found through the deployer's deployments), the gateway
and any extra target, every interval, into the series book.

What each scrape costs (fetch and parse) is itself a metric: `modelgallery_monitor_scrape_duration_seconds`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import httpx

from gallery_common.contracts.serving_metrics import ServingPage, parse_page
from gallery_common.telemetry import counter, gauge, get_logger, histogram

from .series import SeriesBook

log = get_logger(__name__)

SCRAPE_SECONDS = histogram(
    "monitor_scrape_duration_seconds",
    "Time to fetch and parse one target's /metrics, by kind of target.",
    ("kind",),
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
LAST_SCRAPE_SECONDS = gauge(
    "monitor_scrape_last_duration_seconds", "Time the last scrape of each target took.", ("target",)
)
SCRAPE_FAILURES = counter("monitor_scrape_failures_total", "Scrapes that failed, by kind of target.", ("kind",))


@dataclass(frozen=True)
class Target:
    """A base URL whose `/metrics` is scraped, and what it is (model_server, gateway, extra)."""

    url: str
    kind: str


class Scraper:
    """Discovers targets and scrapes them in rounds; `run()` loops until cancelled."""

    def __init__(
        self,
        series: SeriesBook,
        client: httpx.AsyncClient,
        *,
        interval_s: float,
        timeout_s: float,
        deployer_url: str | None = None,
        gateway_url: str | None = None,
        extra_targets: tuple[str, ...] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.series = series
        self.client = client
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.deployer_url = deployer_url
        self.gateway_url = gateway_url
        self.extra_targets = extra_targets
        self.clock = clock
        self._model_servers: list[str] = []
        self._warned: dict[str, str] = {}  # target → the last failure logged, so an outage logs once
        self._gauged: set[str] = set()  # targets with a last-duration gauge

    async def run(self) -> None:
        """Scrape a round every interval (measured from the start of the previous round)."""
        while True:
            started = time.monotonic()
            try:
                await self.scrape_round()
            except Exception as exc:  # one bad round must not end the series
                log.warning("scrape_round_failed", reason=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    async def targets(self) -> list[Target]:
        """Model servers from the deployer (the last known ones when it does not answer), the gateway, extras."""
        if self.deployer_url:
            servers = await self._discover()
            if servers is not None:
                self._model_servers = servers
        found = [Target(url, "model_server") for url in self._model_servers]
        if self.gateway_url:
            found.append(Target(self.gateway_url, "gateway"))
        found.extend(Target(url, "extra") for url in self.extra_targets)
        unique: dict[str, Target] = {}
        for target in found:
            unique.setdefault(target.url, target)
        return list(unique.values())

    async def _discover(self) -> list[str] | None:
        url = f"{self.deployer_url}/api/v1/deployments"
        try:
            response = await self.client.get(url, timeout=self.timeout_s)
            response.raise_for_status()
            deployments = response.json()
            endpoints = [e.rstrip("/") for d in deployments for e in d.get("endpoints") or []]
        except (httpx.HTTPError, ValueError, TypeError, AttributeError) as exc:
            self._warn(url, f"{type(exc).__name__}: {exc}", "deployer_unreachable")
            return None
        self._ok(url)
        return sorted(set(endpoints))

    async def scrape(self, target: Target) -> ServingPage | None:
        """Fetch and parse one target's `/metrics`; None (logged once per outage) when that fails."""
        started = time.perf_counter()
        try:
            response = await self.client.get(f"{target.url}/metrics", timeout=self.timeout_s)
            response.raise_for_status()
            page = await anyio.to_thread.run_sync(parse_page, response.text)
        except (httpx.HTTPError, ValueError) as exc:
            SCRAPE_FAILURES.labels(target.kind).inc()
            self._warn(target.url, f"{type(exc).__name__}: {exc}", "scrape_failed")
            return None
        seconds = time.perf_counter() - started
        SCRAPE_SECONDS.labels(target.kind).observe(seconds)
        LAST_SCRAPE_SECONDS.labels(target.url).set(seconds)
        self._gauged.add(target.url)
        self._ok(target.url)
        return page

    async def scrape_round(self) -> dict[str, ServingPage | None]:
        """Scrape every target at once and add the round to the series."""
        targets = await self.targets()
        pages = await asyncio.gather(*(self.scrape(t) for t in targets))
        by_url = {t.url: page for t, page in zip(targets, pages, strict=True)}
        self.series.record(self.clock(), by_url)
        self._forget(set(by_url))
        return by_url

    def _forget(self, current: set[str]) -> None:
        """Drop the gauges and outage notes of targets that are gone (a retired model server)."""
        for url in self._gauged - current:
            LAST_SCRAPE_SECONDS.remove(url)
        self._gauged &= current
        for url in set(self._warned) - current - {f"{self.deployer_url}/api/v1/deployments"}:
            del self._warned[url]

    def _warn(self, url: str, reason: str, what: str) -> None:
        if self._warned.get(url) != reason:
            self._warned[url] = reason
            log.warning(what, target=url, reason=reason)

    def _ok(self, url: str) -> None:
        if self._warned.pop(url, None) is not None:
            log.info("scrape_recovered", target=url)
