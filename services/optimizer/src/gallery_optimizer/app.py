"""The optimizer service app: policies and jobs over REST, a worker on the `OPTIMIZE_JOBS` work queue,
the `model.validated` consumer. Any number of replicas may run against one database and one NATS.

Its tables are migrated to the newest revision at start-up (Alembic). torch and onnxruntime are
imported by the worker when a job runs, so the service starts and answers `/readyz` quickly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
from fastapi import FastAPI

from gallery_common.app import ServiceResources, create_app
from gallery_common.audit_trail import open_service_trail
from gallery_common.bus import BusBridge
from gallery_common.registry_client import RegistryClient
from gallery_common.service_identity import service_auth
from gallery_common.settings import load_settings
from gallery_common.work_queue import OPTIMIZE_JOBS, WorkQueue

from . import routes
from .consumer import validated_events
from .job_store import JobStore
from .migrations import upgrade
from .routes import OptimizerCore
from .runner import BundleFn, OptimizationRunner, OptimizeFn, default_pipeline
from .settings import OptimizerSettings


def create(
    settings: OptimizerSettings | None = None,
    *,
    pipeline: Callable[[], tuple[OptimizeFn, BundleFn, Callable[..., Any]]] = default_pipeline,
) -> FastAPI:
    """Build the optimizer app; `pipeline` replaces the real optimization library (tests use a small fake)."""
    settings = settings or load_settings(OptimizerSettings)

    async def startup(resources: ServiceResources, stack: AsyncExitStack) -> OptimizerCore:
        assert resources.engine is not None and resources.store is not None and resources.bus is not None
        await anyio.to_thread.run_sync(upgrade, resources.engine)
        jobs = JobStore(resources.engine)
        registry = RegistryClient(
            settings.registry_url,
            auth=service_auth(settings, settings.registry_token),
            timeout=settings.registry_timeout,
        )
        stack.callback(registry.close)
        queue = WorkQueue(resources.bus, OPTIMIZE_JOBS, ack_wait=settings.job_ack_wait_s)
        await queue.ensure()
        runner = OptimizationRunner(
            jobs=jobs,
            store=resources.store,
            registry=registry,
            publish=BusBridge(resources.bus, asyncio.get_running_loop()).publish,
            work_dir=settings.resolved_work_dir,
            progress_interval=settings.progress_interval,
            keep_workdirs=settings.keep_workdirs,
            pipeline=pipeline,
            ack_wait=settings.job_ack_wait_s,
            max_attempts=settings.job_max_attempts,
        )
        for job_id in await anyio.to_thread.run_sync(jobs.unqueued, settings.job_ack_wait_s):
            await queue.submit(job_id)
        await stack.enter_async_context(queue.working(runner))
        await stack.enter_async_context(validated_events(jobs, queue, resources.bus).consumer(resources.bus))
        # policy changes are recorded in the model's project's audit chain
        trail = resources.trail = await open_service_trail(settings, resources.bus, stack)
        return OptimizerCore(jobs, runner, queue, trail)

    return create_app(
        settings,
        title="Model Gallery optimizer",
        description="INT8, FP16, pruned and distilled variants of validated models, measured; the edge bundle.",
        routers=[routes.router],
        use_bus=True,
        use_store=True,
        use_database=True,
        startup=startup,
    )
