"""The monitor app: the lifecycle consumer, the sample subscription, the scraper, the evaluator and REST.

Its page is the Gallery's Monitoring view (services/gallery), which reads this REST API through the
gallery's proxy.

Its tables are migrated to the newest revision at start-up (Alembic).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from contextlib import AsyncExitStack
from typing import Any

import anyio
import httpx
from fastapi import FastAPI
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from gallery_common.app import ServiceResources, create_app
from gallery_common.audit_trail import open_service_trail
from gallery_common.events import CloudEvent, ModelDegraded, ModelOutcome, ModelUsage, Payload
from gallery_common.leader import LeaderElection, leader_router, publish_as_leader
from gallery_common.leader_lease import in_cluster, open_leader_lock
from gallery_common.registry_client import RegistryClient
from gallery_common.router import EventRouter
from gallery_common.service_identity import service_auth
from gallery_common.settings import load_settings
from gallery_common.telemetry import get_logger

from . import routes
from .core import Monitor
from .evaluator import run_evaluator
from .migrations import upgrade
from .quality import QualityStore
from .quality_writer import OutcomeWriter
from .records import Slo
from .references import ReferenceCache, registry_split_loader
from .samples import SampleBook
from .scraper import Scraper
from .series import SeriesBook
from .settings import MonitorSettings
from .text_profile import TextLimits

DURABLE = "monitor"
CONCURRENCY = 64  # lifecycle events handled at once by the monitor's consumer
log = get_logger(__name__)


def default_slo(settings: MonitorSettings) -> Slo:
    return Slo(
        p99_ms=settings.slo_p99_ms,
        error_rate=settings.slo_error_rate,
        drift_psi=settings.slo_drift_psi,
        drift_min_samples=settings.slo_drift_min_samples,
        window_s=settings.slo_window_s,
        min_online_accuracy=settings.slo_min_online_accuracy,
        max_accuracy_drop=settings.slo_max_accuracy_drop,
        max_online_rmse=settings.slo_max_online_rmse,
        max_rmse_ratio=settings.slo_max_rmse_ratio,
        quality_min_rows=settings.slo_quality_min_rows,
        quality_window_s=settings.slo_quality_window_s,
    )


def timeline_events(monitor: Monitor, concurrency: int = CONCURRENCY) -> EventRouter:
    """The durable consumer `monitor` of every lifecycle event; a redelivered event is stored once. Events are
    handled up to `concurrency` at once (each is stored on its own, keyed by its id, and the timeline reads in
    event time), so a burst of feedback is kept a batch per transaction."""
    events = EventRouter(DURABLE, ack_wait=30.0, batch=2 * concurrency, concurrency=concurrency)
    outcomes = OutcomeWriter(monitor.quality)

    @events.on(Payload)
    async def record(_: Payload, event: CloudEvent[Any]) -> None:
        await anyio.to_thread.run_sync(monitor.timeline.record, event)

    @events.on(ModelUsage)
    async def usage(_: ModelUsage) -> None:
        """Usage reports (every few seconds from each gateway) are the deployer's to keep, not the timeline's."""

    @events.on(ModelOutcome)
    async def outcome(_: ModelOutcome, event: CloudEvent[ModelOutcome]) -> None:
        """Feedback on one answer: online quality, not a timeline line."""
        await outcomes.record(event)

    return events


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _unsubscribe(subscription: Subscription) -> None:
    with contextlib.suppress(Exception):
        await subscription.unsubscribe()


def create(settings: MonitorSettings | None = None) -> FastAPI:
    """Build the monitor app (settings from the environment when not given)."""
    settings = settings or load_settings(MonitorSettings)
    url = f"http://{settings.bind_host}:{settings.port}"
    election = LeaderElection("monitor", settings.resolved_leader_identity, url, settings.leader_ttl_s)

    async def startup(resources: ServiceResources, stack: AsyncExitStack) -> Monitor:
        assert resources.engine is not None and resources.store is not None and resources.bus is not None
        bus = resources.bus
        await anyio.to_thread.run_sync(upgrade, resources.engine)
        # few retries: a reference that cannot be had now is asked for again after reference_retry_s
        registry = RegistryClient(
            settings.registry_url,
            auth=service_auth(settings, settings.registry_token),
            timeout=10.0,
            retry_delays=(0.5, 1.0),
        )
        stack.callback(registry.close)
        text_limits = TextLimits(max_tokens=settings.text_max_tokens, top_tokens=settings.text_top_tokens)
        references = ReferenceCache(
            registry_split_loader(registry, resources.store),
            max_rows=settings.reference_max_rows,
            retry_s=settings.reference_retry_s,
            text_limits=text_limits,
        )
        series = SeriesBook(settings.series_retention_s, settings.scrape_interval_s)
        samples = SampleBook(settings.sample_buffer_rows, text_limits)
        monitor = await anyio.to_thread.run_sync(
            lambda: Monitor(
                resources.engine,  # type: ignore[arg-type]
                default_slo=default_slo(settings),
                series=series,
                samples=samples,
                references=references,
                quality=QualityStore(resources.engine, settings.outcome_retention_s),  # type: ignore[arg-type]
                ks_alpha=settings.drift_ks_alpha,
                min_requests=settings.slo_min_requests,
                text_psi_threshold=settings.text_drift_psi,
                text_warn_psi=settings.text_warn_psi,
            )
        )

        # SLO changes are recorded in the model's project's audit chain
        monitor.trail = resources.trail = await open_service_trail(settings, bus, stack)

        async def on_sample(msg: Msg) -> None:
            samples.ingest(msg.data, time.time())

        async def publish(payload: ModelDegraded, event_id: str) -> None:
            await publish_as_leader(bus, election, payload, event_id)

        client = await stack.enter_async_context(httpx.AsyncClient(headers=settings.scrape_headers))
        # every monitor ingests samples and scrapes, so a new leader judges a full window at once
        subscription = await bus.nc.subscribe(settings.sample_subject, cb=on_sample)
        stack.push_async_callback(_unsubscribe, subscription)
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
        stack.push_async_callback(_cancel, loop.create_task(scraper.run(), name="monitor-scraper"))

        async def lead(term: int) -> None:
            # only the leader records the timeline and judges; it resumes the episodes open in the database
            await anyio.to_thread.run_sync(monitor.alerts.restore)
            consumer = timeline_events(monitor).consumer(bus)
            await asyncio.gather(consumer.run(), run_evaluator(monitor, publish, settings.evaluate_interval_s))

        # in a pod, a Lease in its namespace
        lock = await open_leader_lock(settings, bus, "monitor", stack, on_kubernetes=in_cluster())
        stack.push_async_callback(_cancel, loop.create_task(election.run(lock, lead), name="monitor-election"))
        return monitor

    app = create_app(
        settings,
        title="Model Gallery monitor",
        description=(
            "Lifecycle timeline, serving figures scraped from the model servers and the gateway, drift of "
            "sampled requests against the training data, online quality from feedback, SLOs, alerts and "
            "model.degraded; the Gallery's "
            "Monitoring view shows them."
        ),
        routers=[routes.router, leader_router(election)],
        use_bus=True,
        use_store=True,
        use_database=True,
        startup=startup,
    )
    app.state.leader = election
    return app
