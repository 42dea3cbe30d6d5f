"""The monitor app: the lifecycle consumer, the sample subscription, the scraper, the evaluator, REST and the dashboard.

Its tables are created at start-up (`create_all`; no migrations yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
from fastapi import FastAPI
from nats.aio.msg import Msg

from gallery_common.app import ServiceResources, create_app
from gallery_common.bus import EventBus
from gallery_common.consumer import Consumer
from gallery_common.events import CloudEvent, ModelDegraded
from gallery_common.registry_client import RegistryClient
from gallery_common.settings import load_settings
from gallery_common.telemetry import get_logger

from . import routes
from .core import Monitor
from .dashboard import router as dashboard_router
from .evaluator import run_evaluator
from .models import Slo, create_tables
from .references import ReferenceCache, registry_split_loader
from .samples import SampleBook
from .scraper import Scraper
from .series import SeriesBook
from .settings import MonitorSettings

DURABLE = "monitor"
log = get_logger(__name__)


def default_slo(settings: MonitorSettings) -> Slo:
    return Slo(
        p99_ms=settings.slo_p99_ms,
        error_rate=settings.slo_error_rate,
        drift_psi=settings.slo_drift_psi,
        drift_min_samples=settings.slo_drift_min_samples,
        window_s=settings.slo_window_s,
    )


def start_timeline_consumer(bus: EventBus, monitor: Monitor) -> Consumer:
    """The durable consumer `monitor` of every lifecycle event; a redelivered event is stored once."""

    async def handle(event: CloudEvent[Any]) -> None:
        await anyio.to_thread.run_sync(monitor.timeline.record, event)

    consumer = bus.consumer(DURABLE, handle, events=None, ack_wait=30.0, batch=50)
    consumer.start()
    return consumer


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create(settings: MonitorSettings | None = None) -> FastAPI:
    """Build the monitor app (settings from the environment when not given)."""
    settings = settings or load_settings(MonitorSettings)

    @asynccontextmanager
    async def startup(app: FastAPI, resources: ServiceResources) -> AsyncIterator[None]:
        assert resources.engine is not None and resources.store is not None and resources.bus is not None
        bus = resources.bus
        await anyio.to_thread.run_sync(create_tables, resources.engine)
        token = settings.registry_token.get_secret_value() if settings.registry_token else None
        # few retries: a reference that cannot be had now is asked for again after reference_retry_s
        registry = RegistryClient(settings.registry_url, token, timeout=10.0, retry_delays=(0.5, 1.0))
        references = ReferenceCache(
            registry_split_loader(registry, resources.store),
            max_rows=settings.reference_max_rows,
            retry_s=settings.reference_retry_s,
        )
        series = SeriesBook(settings.series_retention_s, settings.scrape_interval_s)
        samples = SampleBook(settings.sample_buffer_rows)
        monitor = await anyio.to_thread.run_sync(
            lambda: Monitor(
                resources.engine,  # type: ignore[arg-type]
                default_slo=default_slo(settings),
                series=series,
                samples=samples,
                references=references,
                ks_alpha=settings.drift_ks_alpha,
                min_requests=settings.slo_min_requests,
            )
        )

        async def on_sample(msg: Msg) -> None:
            samples.ingest(msg.data, time.time())

        async def publish(payload: ModelDegraded, event_id: str) -> None:
            await bus.publish(payload, event_id=event_id)

        subscription = await bus.nc.subscribe(settings.sample_subject, cb=on_sample)
        consumer = start_timeline_consumer(bus, monitor)
        client = httpx.AsyncClient(headers=settings.scrape_headers)
        scraper = Scraper(
            series,
            client,
            interval_s=settings.scrape_interval_s,
            timeout_s=settings.scrape_timeout_s,
            deployer_url=settings.deployer_url,
            gateway_url=settings.gateway_url,
            extra_targets=tuple(settings.scrape_targets),
        )
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(scraper.run(), name="monitor-scraper"),
            loop.create_task(run_evaluator(monitor, publish, settings.evaluate_interval_s), name="monitor-evaluator"),
        ]
        resources.extras[routes.MONITOR_KEY] = monitor
        try:
            yield
        finally:
            resources.extras.pop(routes.MONITOR_KEY, None)
            for task in tasks:
                await _cancel(task)
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
            await consumer.stop()
            await client.aclose()
            registry.close()

    return create_app(
        settings,
        title="Model Gallery monitor",
        description=(
            "Lifecycle timeline, serving figures scraped from the model servers and the gateway, drift of "
            "sampled requests against the training data, SLOs, alerts and model.degraded; the dashboard at /."
        ),
        routers=[routes.router, dashboard_router],
        use_bus=True,
        use_store=True,
        use_database=True,
        startup=startup,
    )
