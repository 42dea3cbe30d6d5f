"""The deployer app: the rollout controller, its event consumer, the runtime and the REST API."""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AsyncExitStack

import anyio
from fastapi import FastAPI

from gallery_common.app import ServiceResources, create_app
from gallery_common.audit_trail import open_service_trail
from gallery_common.events import Payload
from gallery_common.leader import LeaderElection, leader_router, publish_as_leader
from gallery_common.leader_lease import open_leader_lock
from gallery_common.registry_client import RegistryClient
from gallery_common.routes_kv import RoutesBucket
from gallery_common.service_identity import service_auth
from gallery_common.settings import load_settings
from gallery_common.telemetry import get_logger

from ..experiments.api import router as experiments_router
from ..experiments.consumer import outcome_events
from ..experiments.controller import Experiments
from ..experiments.records import ExperimentStore
from ..runtime.base import Runtime
from ..usage import api as usage_api
from ..usage.consumer import usage_events
from ..usage.migrations import upgrade as upgrade_usage
from ..usage.records import UsageStore
from . import api, routes_api
from .audit import DeployerAudit
from .consumer import rollout_events
from .controller import Controller
from .migrations import upgrade
from .records import DeploymentStore
from .routing import GatewayRoutes
from .settings import DeployerSettings

TICK_S = 1.0
log = get_logger(__name__)


def make_runtime(settings: DeployerSettings) -> Runtime:
    """The runtime the settings name; the local one gets the deployer's own settings as its children's env."""
    if settings.runtime == "kubernetes":
        from ..runtime.kubernetes import KubernetesRuntime

        return KubernetesRuntime(settings.kubernetes)
    from ..runtime.local import LocalOptions, LocalRuntime

    options = LocalOptions(
        log_dir=settings.resolved_log_dir,
        idle_scale_to_zero_s=settings.idle_scale_to_zero_s,
        openvino_python=settings.resolved_openvino_python,
    )
    env = {
        "GALLERY_HOME": str(settings.home.resolve()),
        "GALLERY_ARTIFACT_ROOT": settings.resolved_artifact_root,
        "GALLERY_NATS_URL": settings.nats_url,
        "GALLERY_LOG_LEVEL": settings.log_level,
    }
    return LocalRuntime(options, env)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _ticker(controller: Controller, experiments: Experiments) -> None:
    """Judge canaries whose window ended, retire drained versions and move experiments on, once a second."""
    while True:
        await asyncio.sleep(TICK_S)
        try:
            await controller.judge_due_canaries()
            await controller.retire_drained()
            await experiments.tick()
        except Exception as exc:  # one bad tick (NATS down) must not stop the next
            log.warning("deployer_tick_failed", reason=f"{type(exc).__name__}: {exc}")


def create(settings: DeployerSettings | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    """Build the deployer app; `runtime` replaces the one the settings name (tests)."""
    settings = settings or load_settings(DeployerSettings)
    election = LeaderElection(
        "deployer", settings.resolved_leader_identity, settings.resolved_public_url, settings.leader_ttl_s
    )

    async def startup(resources: ServiceResources, stack: AsyncExitStack) -> Controller:
        assert resources.engine is not None and resources.store is not None and resources.bus is not None
        await anyio.to_thread.run_sync(upgrade, resources.engine)
        await anyio.to_thread.run_sync(upgrade_usage, resources.engine)
        bus = resources.bus
        # every replica adds the gateways' usage reports to the store (each report once)
        usage_consumer = usage_events(UsageStore(resources.engine)).consumer(bus)
        usage_consumer.start()
        stack.push_async_callback(usage_consumer.stop)

        # appends what an earlier run left in the outbox
        trail = resources.trail = await open_service_trail(settings, bus, stack)
        audit = DeployerAudit(trail, DeploymentStore(resources.engine))
        app.state.audit = audit

        async def publish(payload: Payload, event_id: str) -> None:
            await publish_as_leader(bus, election, payload, event_id)
            # every change of what serves is announced by an event: recorded once, under its id
            await audit.published(payload, event_id)

        registry = RegistryClient(settings.registry_url, auth=service_auth(settings, settings.registry_token))
        stack.callback(registry.close)
        routes = GatewayRoutes(await RoutesBucket.open(bus))
        used_runtime = runtime or make_runtime(settings)
        stack.push_async_callback(used_runtime.close)
        controller = Controller(
            settings,
            DeploymentStore(resources.engine),
            used_runtime,
            routes,
            registry,
            resources.store,
            publish,
            fence=election.check,
        )
        stack.push_async_callback(controller.close)
        experiments = Experiments(controller, ExperimentStore(resources.engine), publish)
        app.state.experiments = experiments

        async def lead(term: int) -> None:
            # what a leader does, and followers do not: resume from the records, judge canaries, consume
            await controller.restore()
            await experiments.restore()
            # a dead leader's event comes back about when its successor is elected
            consumer = rollout_events(controller, ack_wait=2 * settings.leader_ttl_s).consumer(bus)
            outcomes = outcome_events(experiments, ack_wait=2 * settings.leader_ttl_s).consumer(bus)
            await asyncio.gather(consumer.run(), outcomes.run(), _ticker(controller, experiments))

        # with the Kubernetes runtime, a Lease in the namespace of its model servers
        kubernetes = settings.runtime == "kubernetes"
        where = settings.kubernetes.namespace
        lock = await open_leader_lock(settings, bus, "deployer", stack, on_kubernetes=kubernetes, namespace=where)
        campaign = asyncio.get_running_loop().create_task(election.run(lock, lead), name="deployer-election")
        stack.push_async_callback(_cancel, campaign)
        return controller

    app = create_app(
        settings,
        title="Model Gallery deployer",
        description="Rollouts on model.validated: canary analysis, promotion, rollback; local and Kubernetes runtimes.",
        routers=[api.router, routes_api.router, experiments_router, usage_api.router, leader_router(election)],
        use_bus=True,
        use_store=True,
        use_database=True,
        startup=startup,
    )
    app.state.leader = election
    return app
