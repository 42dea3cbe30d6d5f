"""The trainer service app: REST API for jobs and runs, a job worker, the search consumer.

Its tables are created at start-up (`create_all`; no migrations yet). torch and DeepSpeed are
imported by the worker when a job runs, so the service starts and answers `/readyz` quickly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from gallery_common.app import ServiceResources, create_app
from gallery_common.bus import BusBridge
from gallery_common.events import CloudEvent, ModelRejected, ModelValidated
from gallery_common.settings import load_settings
from gallery_common.telemetry import get_logger

from . import routes_jobs, routes_runs
from .jobs import JobService
from .models import Job, Run, RunMetric, Search, SearchTrial
from .runner import JobRunner, TrainFn
from .search import SearchCoordinator
from .settings import TrainerSettings

log = get_logger(__name__)
SEARCH_DURABLE = "trainer-search"
_TABLES = [model.__table__ for model in (Job, Run, RunMetric, Search, SearchTrial)]  # type: ignore[union-attr]


def create_tables(engine: Engine) -> None:
    SQLModel.metadata.create_all(engine, tables=_TABLES)


def _verdict_handler(searches: SearchCoordinator, runner: JobRunner) -> Any:
    async def on_verdict(event: CloudEvent[Any]) -> None:
        """`model.rejected` of a trial starts the next one; `model.validated` of a trial ends its search."""
        data = event.data
        if data.run_id is None:
            return
        if isinstance(data, ModelRejected):
            next_job = await anyio.to_thread.run_sync(searches.on_rejected, data.run_id, list(data.reasons))
            if next_job is not None:
                runner.enqueue(next_job)
        elif isinstance(data, ModelValidated):
            await anyio.to_thread.run_sync(searches.on_validated, data.run_id)

    return on_verdict


def create(settings: TrainerSettings | None = None, *, train: TrainFn | None = None) -> FastAPI:
    """Build the trainer app; `train` replaces `pipeline.run_job` (tests use a small fake)."""
    settings = settings or load_settings(TrainerSettings)

    @asynccontextmanager
    async def startup(app: FastAPI, resources: ServiceResources) -> AsyncIterator[None]:
        assert resources.engine is not None and resources.store is not None and resources.bus is not None
        engine = resources.engine
        await anyio.to_thread.run_sync(create_tables, engine)
        searches = SearchCoordinator(engine)
        bridge = BusBridge(resources.bus, asyncio.get_running_loop())

        def after_job(job_id: str) -> None:
            next_job = searches.on_trial_ended(job_id)
            if next_job is not None:
                runner.enqueue(next_job)

        runner = JobRunner(
            engine=engine,
            store=resources.store,
            publish=bridge.publish,
            jobs_dir=settings.resolved_jobs_dir,
            max_concurrent_jobs=settings.max_concurrent_jobs,
            progress_interval=settings.progress_interval,
            train=train,
            on_finished=after_job,
        )
        jobs = JobService(engine, runner, searches, policy=settings.spec_policy())
        queued = await anyio.to_thread.run_sync(jobs.recover)
        runner.start()
        for job_id in queued:
            runner.enqueue(job_id)
        consumer = resources.bus.consumer(
            SEARCH_DURABLE, _verdict_handler(searches, runner), events=[ModelRejected, ModelValidated]
        )
        consumer.start()
        resources.extras["jobs"] = jobs
        try:
            yield
        finally:
            resources.extras.pop("jobs", None)
            await consumer.stop()
            await anyio.to_thread.run_sync(runner.stop)

    return create_app(
        settings,
        title="Model Gallery trainer",
        description="Training jobs (PyTorch / DeepSpeed), experiment tracking, model.trained events.",
        routers=[routes_jobs.router, routes_runs.router],
        use_bus=True,
        use_store=True,
        use_database=True,
        startup=startup,
    )
