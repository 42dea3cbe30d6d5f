"""The trainer service app: REST API for jobs and runs, a worker on the `TRAIN_JOBS` work queue, the
search consumer.

Any number of replicas may run against one database and one NATS: a job submitted to any of them is
run by whichever takes it from the queue. Its tables are migrated to the newest revision at start-up
(Alembic). torch and DeepSpeed are imported by the worker when a job runs, so the service starts and
answers `/readyz` quickly.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import anyio
from fastapi import FastAPI

from gallery_common.app import ServiceResources, create_app
from gallery_common.audit_trail import open_service_trail
from gallery_common.bus import BusBridge
from gallery_common.events import ModelRejected, ModelValidated
from gallery_common.router import EventRouter
from gallery_common.settings import load_settings
from gallery_common.telemetry import get_logger
from gallery_common.work_queue import TRAIN_JOBS, WorkQueue

from . import routes_imports, routes_jobs, routes_runs
from .imports import ModelImporter
from .job_service import JobService
from .migrations import upgrade
from .runner import TrainFn, TrainingRunner
from .search import SearchCoordinator
from .settings import TrainerSettings

log = get_logger(__name__)
SEARCH_DURABLE = "trainer-search"


def verdict_events(searches: SearchCoordinator, queue: WorkQueue) -> EventRouter:
    """The durable consumer `trainer-search`: the gate's verdicts on the trials of hyperparameter searches."""
    events = EventRouter(SEARCH_DURABLE)

    @events.on(ModelRejected)
    async def rejected(data: ModelRejected) -> None:
        """A rejected trial starts the search's next one."""
        if data.run_id is None:
            return
        next_job = await anyio.to_thread.run_sync(searches.on_rejected, data.run_id, list(data.reasons))
        if next_job is not None:
            await queue.submit(next_job)

    @events.on(ModelValidated)
    async def validated(data: ModelValidated) -> None:
        """A validated trial ends its search."""
        if data.run_id is not None:
            await anyio.to_thread.run_sync(searches.on_validated, data.run_id)

    return events


def create(settings: TrainerSettings | None = None, *, train: TrainFn | None = None) -> FastAPI:
    """Build the trainer app; `train` replaces `pipeline.run_job` (tests use a small fake)."""
    settings = settings or load_settings(TrainerSettings)

    async def startup(resources: ServiceResources, stack: AsyncExitStack) -> JobService:
        assert resources.engine is not None and resources.store is not None and resources.bus is not None
        engine = resources.engine
        await anyio.to_thread.run_sync(upgrade, engine)
        searches = SearchCoordinator(engine)
        bridge = BusBridge(resources.bus, asyncio.get_running_loop())
        queue = WorkQueue(
            resources.bus, TRAIN_JOBS, ack_wait=settings.job_ack_wait_s, concurrency=settings.max_concurrent_jobs
        )
        await queue.ensure()

        def after_job(job_id: str) -> None:
            next_job = searches.on_trial_ended(job_id)
            if next_job is not None:
                queue.submit_blocking(next_job)

        runner = TrainingRunner(
            engine=engine,
            store=resources.store,
            publish=bridge.publish,
            jobs_dir=settings.resolved_jobs_dir,
            progress_interval=settings.progress_interval,
            train=train,
            on_finished=after_job,
            ack_wait=settings.job_ack_wait_s,
            max_attempts=settings.job_max_attempts,
        )
        jobs = JobService(engine, runner, searches, queue.submit_blocking, policy=settings.spec_policy())
        jobs.importer = ModelImporter(engine, resources.store, bridge.publish, settings)
        # submissions and cancellations, and dead letters put back
        jobs.trail = resources.trail = await open_service_trail(settings, resources.bus, stack)
        for job_id in await anyio.to_thread.run_sync(jobs.unqueued):
            await queue.submit(job_id)
        if train is None and settings.standby_ranks:
            from .standby import standby

            standby.keep(settings.standby_ranks)
            stack.callback(standby.close)
        await stack.enter_async_context(queue.working(runner))
        await stack.enter_async_context(verdict_events(searches, queue).consumer(resources.bus))
        return jobs

    return create_app(
        settings,
        title="Model Gallery trainer",
        description="Training jobs (PyTorch / DeepSpeed), experiment tracking, model.trained events.",
        routers=[routes_jobs.router, routes_runs.router, routes_imports.router],
        use_bus=True,
        use_store=True,
        use_database=True,
        startup=startup,
    )
