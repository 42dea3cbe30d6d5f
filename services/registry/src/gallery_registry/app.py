"""The registry's FastAPI app: native REST API, MLflow-compatible subset and the validation gate."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import anyio
from fastapi import FastAPI

from gallery_common.app import ServiceResources, create_app
from gallery_common.audit_log import AuditLog, AuditSettings
from gallery_common.audit_trail import AuditTrail, outbox_path
from gallery_common.projects_kv import ProjectsBucket
from gallery_common.settings import load_settings

from . import api, audit_api, catalogue_api, mlflow_api, projects_api
from .deps import RegistryCore
from .gate import routes as gate_routes
from .gate.consumer import gate_events
from .gate.degraded import degraded_events
from .gate.explainer import ImportanceConfig
from .gate.validator import ValidationGate
from .migrations import upgrade
from .settings import RegistrySettings
from .store import RegistryStore

DESCRIPTION = (
    "The system of record for models: versions (integer and SemVer), artifacts with their sha256, "
    "aliases with an audit history, lineage and validation policies. `/api/v1` is the native API; "
    "`/api/2.0/mlflow` is a subset of the MLflow Model Registry REST API for MLflow clients."
)


def create_app_for(settings: RegistrySettings, *, with_bus: bool = True) -> FastAPI:
    """The registry app for `settings`; `with_bus=False` gives an app without NATS (tests)."""

    async def startup(resources: ServiceResources, stack: AsyncExitStack) -> RegistryCore:
        assert resources.engine is not None and resources.store is not None
        await anyio.to_thread.run_sync(upgrade, resources.engine)
        store = RegistryStore(resources.engine)
        importance = ImportanceConfig(
            enabled=settings.gate_importance,
            rows=settings.gate_importance_rows,
            nsamples=settings.gate_importance_nsamples,
        )
        gate = ValidationGate(store, resources.store, resources.bus, importance=importance)
        # the gate consumes model.trained when there is a bus; its REST route works either way
        audit: AuditTrail | None = None
        projects: ProjectsBucket | None = None
        if resources.bus is not None:
            projects = await ProjectsBucket.open(resources.bus)
            audit = AuditTrail(
                AuditLog(resources.bus, AuditSettings()),
                outbox_path(settings.home.resolve(), settings.service_name),
                service=settings.service_name,
                loop=asyncio.get_running_loop(),
            )
            audit.start()  # appends what an earlier run left in the outbox, then whatever waits there
            stack.push_async_callback(audit.stop)
            gate.audit, gate.projects, resources.trail = audit, projects, audit
            for events in (gate_events(gate), degraded_events(store)):
                await stack.enter_async_context(events.consumer(resources.bus))
        return RegistryCore(store, gate, audit, projects)

    return create_app(
        settings,
        title="Model Gallery registry",
        description=DESCRIPTION,
        routers=[
            api.router,
            audit_api.router,
            catalogue_api.router,
            gate_routes.router,
            mlflow_api.router,
            projects_api.router,
        ],
        use_bus=with_bus,
        use_store=True,
        use_database=True,
        startup=startup,
    )


def create() -> FastAPI:
    """Entry point for `gallery up`: settings from the environment."""
    return create_app_for(load_settings(RegistrySettings))
