"""The deployer's changes in the audit trail: deployments, promotions, rollbacks, experiment decisions,
route weights and policies.

Every change of what serves ends in an event the deployer publishes (`model.deployed`,
`model.rolled_back`, `model.experiment_concluded`), under a deterministic event id. `DeployerAudit`
records each such event as it is published, with the event id as the dedupe key, so a trigger that is
redelivered and runs again is recorded once. Who made the change: the person whose request caused
it (a REST route runs inside `acting_as(caller, reason)`), else the deployer itself
(`service:deployer`) acting on an event or its own canary analysis. Changes that publish no event
(canary weights, policies) are recorded by their routes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import anyio

from gallery_common.audit import DEFAULT_PROJECT, AuditAction, AuditChange, new_dedupe_key
from gallery_common.audit_trail import AuditTrail
from gallery_common.events import ModelDeployed, ModelExperimentConcluded, ModelRolledBack, Payload

from .records import DeploymentStore, Stage


@dataclass(frozen=True)
class Acting:
    """The person behind the current request, the reason they gave and what they asked for."""

    actor: str
    reason: str | None = None
    action: AuditAction | None = None


_ACTING: ContextVar[Acting | None] = ContextVar("gallery_deployer_acting", default=None)


@contextmanager
def acting_as(actor: str, reason: str | None = None, action: AuditAction | None = None) -> Iterator[None]:
    """Attribute the changes made inside the block (in this task) to `actor`, for `reason`."""
    token = _ACTING.set(Acting(actor, reason, action))
    try:
        yield
    finally:
        _ACTING.reset(token)


class DeployerAudit:
    """Turns what the deployer publishes, and what its routes change, into audit records."""

    def __init__(self, trail: AuditTrail, store: DeploymentStore) -> None:
        self.trail = trail
        self.store = store

    def _who(self) -> Acting:
        return _ACTING.get() or Acting(self.trail.service_actor)

    async def record(
        self,
        action: AuditAction,
        target: str,
        *,
        model: str,
        version: int | None = None,
        before: Any = None,
        after: Any = None,
        reason: str | None = None,
        dedupe_key: str | None = None,
        project: str | None = None,
    ) -> None:
        """Record one change in its model's project's chain (`project`, else the model's deployments')."""
        acting = self._who()
        if project is None:
            project = await anyio.to_thread.run_sync(self.store.project_of, model) or DEFAULT_PROJECT
        change = AuditChange(
            project=project,
            actor=acting.actor,
            action=action,
            target=target,
            model=model,
            version=version,
            before=before,
            after=after,
            reason=reason or acting.reason,
            dedupe_key=dedupe_key or new_dedupe_key(),
        )
        await self.trail.record(change)

    async def published(self, payload: Payload, event_id: str) -> None:
        """Record the change `payload` announces (if it is one); `event_id` makes it recorded once."""
        if isinstance(payload, ModelDeployed):
            await self._deployed(payload, event_id)
        elif isinstance(payload, ModelRolledBack):
            await self.record(
                AuditAction.rollback,
                f"{payload.model}/{payload.version}",
                model=payload.model,
                version=payload.version,
                before={"production": payload.version},
                after={"production": payload.to_version},
                reason=payload.reason,
                dedupe_key=event_id,
                project=payload.project,
            )
        elif isinstance(payload, ModelExperimentConcluded):
            await self.record(
                AuditAction.experiment_decision,
                f"{payload.model}/experiments/{payload.experiment_id}",
                model=payload.model,
                version=payload.winner,
                before={"control": payload.control, "versions": payload.versions},
                after={"outcome": payload.outcome, "winner": payload.winner, "traffic_moved": payload.traffic_moved},
                reason=payload.reason,
                dedupe_key=event_id,
                project=payload.project,
            )

    async def _deployed(self, payload: ModelDeployed, event_id: str) -> None:
        records = await anyio.to_thread.run_sync(self.store.for_model, payload.model, None)
        this = next((r for r in records if r.id == payload.deployment_id), None)
        replaced = max((r.version for r in records if r.stage == Stage.previous), default=None)
        acting = self._who()
        action = acting.action or (
            AuditAction.promotion if payload.stage == "production" and replaced is not None else AuditAction.deployment
        )
        before = {"production": replaced} if payload.stage == "production" else None
        await self.record(
            action,
            f"{payload.model}/{payload.version}",
            model=payload.model,
            version=payload.version,
            before=before,
            after={
                "stage": payload.stage,
                "traffic_percent": payload.traffic_percent,
                "variant": payload.variant,
                "deployment_id": payload.deployment_id,
            },
            reason=acting.reason or (this.reason if this is not None else None),
            dedupe_key=event_id,
            project=payload.project,
        )
