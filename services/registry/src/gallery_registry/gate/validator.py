"""The validation gate: a `model.trained` event in, a `model.validated` or `model.rejected` event out.

Transport-agnostic: the JetStream consumer (`consumer.py`) and the REST route (`routes.py`) are
thin adapters over `ValidationGate`. Blocking work (SQL, store I/O, ONNX Runtime) runs in worker
threads. Problems a retry can heal raise `Unavailable`; anything wrong with the model or its
artifacts becomes a rejection reason, so a bad model never loops.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from pydantic import ValidationError

from gallery_common.artifacts import ArtifactStore
from gallery_common.audit import AuditAction, AuditChange, new_dedupe_key
from gallery_common.audit_trail import AuditTrail
from gallery_common.bus import EventBus
from gallery_common.db import DATABASE_UNAVAILABLE
from gallery_common.errors import Conflict, InvalidRequest, NotFound, Unavailable
from gallery_common.events import CloudEvent, ModelRejected, ModelTrained, ModelValidated
from gallery_common.projects import DEFAULT_PROJECT
from gallery_common.telemetry import counter, get_logger, histogram

from ..model_card import ModelCards
from ..schemas import ArtifactRole, ValidationPolicy, VersionCreate, VersionPublic, VersionStatus
from ..store import RegistryStore
from .degraded import CLEARED, MARK
from .explainer import ImportanceConfig, attach_explainer

if TYPE_CHECKING:
    from gallery_common.projects_kv import ProjectsBucket

    from .evaluation import LatencyConfig
    from .judge import Verdict

log = get_logger(__name__)
T = TypeVar("T")

FINAL = frozenset({VersionStatus.validated, VersionStatus.rejected})
_KNOWN_ROLES = frozenset(role.value for role in ArtifactRole)

_OUTCOMES = counter("gate_validations_total", "Versions the validation gate decided, by outcome.", ("outcome",))
_SECONDS = histogram(
    "gate_validation_duration_seconds",
    "Time to fetch, evaluate and judge one version.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)


@dataclass(frozen=True)
class GateOutcome:
    """What the gate decided for a version, and the version as it now stands."""

    version: VersionPublic
    report: dict[str, Any]
    reasons: list[str]

    @property
    def passed(self) -> bool:
        return not self.reasons

    def event_payload(self) -> ModelValidated | ModelRejected:
        return outcome_payload(self.version)


def outcome_payload(version: VersionPublic) -> ModelValidated | ModelRejected:
    """The `model.validated` / `model.rejected` payload for a version the gate has decided."""
    report = version.evaluation_report or {}
    if version.status == VersionStatus.validated:
        # the generated card is left out: it is replaced whenever the card text changes, and an event
        # should name only what stays as it was announced
        artifacts = {str(role): a.ref for role, a in version.artifacts.items() if role != ArtifactRole.model_card}
        return ModelValidated(
            model=version.name,
            project=version.project,
            version=version.version,
            run_id=version.run_id,
            semver=version.semver,
            artifacts=artifacts,
            report=report,
        )
    if version.status == VersionStatus.rejected:
        reasons = version.rejection_reasons or ["rejected by the validation gate"]
        return ModelRejected(
            model=version.name,
            project=version.project,
            version=version.version,
            run_id=version.run_id,
            reasons=reasons,
            report=report,
        )
    raise InvalidRequest(f"version {version.version} of model {version.name!r} is {version.status}, not decided")


async def _blocking(fn: Callable[..., T], *args: Any) -> T:
    """Run `fn` in a worker thread; a database that cannot be reached is Unavailable (retried)."""
    try:
        return await anyio.to_thread.run_sync(fn, *args)
    except DATABASE_UNAVAILABLE as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise Unavailable(f"registry database unavailable: {type(exc).__name__}: {first_line}") from exc


def _judge(
    store: ArtifactStore,
    version: VersionPublic,
    policy: ValidationPolicy,
    champion: VersionPublic | None,
    latency: LatencyConfig | None,
    importance: ImportanceConfig,
) -> Verdict:
    # onnx and ONNX Runtime cost ~40 MB of RSS: an idle registry never loads them
    from .evaluation import LatencyConfig
    from .judge import judge_version

    return judge_version(store, version, policy, champion, latency or LatencyConfig(), importance)


class ValidationGate:
    """Registers trained models, evaluates them itself and records and announces the verdict."""

    def __init__(
        self,
        registry: RegistryStore,
        artifacts: ArtifactStore,
        bus: EventBus | None = None,
        *,
        latency: LatencyConfig | None = None,
        importance: ImportanceConfig | None = None,
    ) -> None:
        """`bus` None: verdicts are recorded but not published (an app run without NATS). `importance`:
        how versions are explained (default: on, with `ImportanceConfig`'s sample sizes)."""
        self.registry = registry
        self.artifacts = artifacts
        self.bus = bus
        self.latency = latency
        self.importance = importance or ImportanceConfig()
        self.cards = ModelCards(registry, artifacts)
        self._in_flight: set[tuple[str, int]] = set()
        # where the gate records the versions it registers and decides (None: nowhere, an app without NATS)
        self.audit: AuditTrail | None = None
        # the projects a model.trained may name (None: not checked, an app without NATS)
        self.projects: ProjectsBucket | None = None

    async def _check_project(self, project: str) -> None:
        """A `model.trained` for a project that does not exist is refused (NotFound: the consumer
        dead-letters it with the reason), not registered into a project no one holds a role in."""
        if self.projects is None or project == DEFAULT_PROJECT:
            return
        if await self.projects.record(project) is None:
            raise NotFound(
                f"project {project!r} does not exist: its model.trained cannot be registered (create it with "
                f"`gallery projects create {project}`, then put the event back: `gallery events redeliver`)"
            )

    async def on_trained(self, event: CloudEvent[ModelTrained]) -> GateOutcome | None:
        """Handle one `model.trained` event; safe to run again on the same event.

        The version is registered once per event id. A version already decided is not evaluated
        again: its outcome is published once more under the same event id (`<event id>:outcome`),
        which JetStream de-duplicates, so a crash between deciding and publishing loses nothing.
        Returns None when the version was already decided (or archived).
        """
        trained = event.data
        await self._check_project(trained.project)
        # the model joins the event's project when it is new; a model of another project is refused
        # (InvalidRequest: the consumer dead-letters the event with the reason)
        register = partial(self.registry.register_version, create_model=True, project=trained.project)
        version = await _blocking(register, trained.model, registration_for(event))
        if version.status == VersionStatus.pending:  # registered now (or by an attempt that stopped before judging)
            after = {"version": version.version, "semver": version.semver, "status": version.status.value}
            await self._audit(
                AuditAction.registration, version, None, after, f"trained: {event.id}", f"{event.id}:registered"
            )
        outcome_id = f"{event.id}:outcome"
        if version.status in FINAL:
            log.info("event already handled, outcome re-published", model=version.name, version=version.version)
            await self._publish(outcome_payload(version), outcome_id)
            return None
        if version.status == VersionStatus.archived:
            log.info("version archived before validation; nothing to do", model=version.name, version=version.version)
            return None
        outcome = await self.validate(version, extra_reasons=_unknown_roles(trained))
        await self._audit_verdict(version, outcome, outcome_id)
        await self._publish(outcome.event_payload(), outcome_id)
        return outcome

    async def revalidate(self, name: str, version: int) -> GateOutcome:
        """Run the gate again on a registered version (after `model.degraded`, or a changed policy).

        The version's status follows the new verdict, which is published as a new event.
        """
        current = await _blocking(self.registry.get_version, name, version)
        if current.status == VersionStatus.archived:
            raise Conflict(f"version {version} of model {name!r} is archived; archived versions are not validated")
        outcome = await self.validate(current)
        await self._audit_verdict(current, outcome, None)
        if MARK in current.tags:
            await _blocking(self.registry.merge_version_tags, name, version, CLEARED)
        await self._publish(outcome.event_payload(), None)
        return outcome

    async def validate(self, version: VersionPublic, *, extra_reasons: list[str] | None = None) -> GateOutcome:
        """Evaluate `version` and record the verdict (status validated or rejected, report, reasons).

        A passing version gets the explainer profile the gate built before it is marked validated, so
        `model.validated` names it; Unavailable (retried) if the store or the database cannot take it.
        """
        key = (version.name, version.version)
        if key in self._in_flight:
            raise Unavailable(f"version {version.version} of model {version.name!r} is being validated right now")
        self._in_flight.add(key)
        started = time.perf_counter()
        try:
            await _blocking(self.registry.set_version_status, version.name, version.version, VersionStatus.validating)
            policy = await _blocking(self.registry.get_validation_policy, version.name)
            champion = await _blocking(self._champion, version.name, policy)
            verdict: Verdict = await _blocking(
                _judge, self.artifacts, version, policy, champion, self.latency, self.importance
            )
            verdict.reasons[:0] = extra_reasons or []
            status = VersionStatus.validated if verdict.passed else VersionStatus.rejected
            if verdict.passed and verdict.explainer is not None:
                await _blocking(attach_explainer, self.registry, self.artifacts, version, verdict.explainer)
            decided = await _blocking(self._record, version, status, verdict)
            # a passed version gets its card; one re-judged gets a fresh card with the new evaluation
            if await _blocking(self.cards.refresh, version.name, decided) is not None:
                decided = await _blocking(self.registry.get_version, version.name, version.version)
        finally:
            self._in_flight.discard(key)
        _OUTCOMES.labels(status.value).inc()
        _SECONDS.observe(time.perf_counter() - started)
        log.info(
            "version validated" if verdict.passed else "version rejected",
            model=version.name,
            version=version.version,
            reasons=verdict.reasons,
        )
        return GateOutcome(version=decided, report=verdict.report, reasons=verdict.reasons)

    def _champion(self, name: str, policy: ValidationPolicy) -> VersionPublic | None:
        try:
            return self.registry.get_version_by_alias(name, policy.champion_alias)
        except NotFound:
            return None

    def _record(self, version: VersionPublic, status: VersionStatus, verdict: Verdict) -> VersionPublic:
        return self.registry.set_version_status(
            version.name,
            version.version,
            status,
            evaluation_report=verdict.report,
            rejection_reasons=verdict.reasons,
        )

    async def _audit(
        self, action: AuditAction, version: VersionPublic, before: Any, after: Any, reason: str, key: str | None
    ) -> None:
        if self.audit is None:
            return
        change = AuditChange(
            project=version.project,
            actor=self.audit.service_actor,
            action=action,
            target=f"{version.name}/{version.version}",
            model=version.name,
            version=version.version,
            before=before,
            after=after,
            reason=reason,
            dedupe_key=key or new_dedupe_key(),
        )
        await self.audit.record(change)

    async def _audit_verdict(self, before: VersionPublic, outcome: GateOutcome, key: str | None) -> None:
        """Record the status the gate's verdict gave the version, with the gate's reasons as the why."""
        reason = "; ".join(outcome.reasons) or f"passed the validation gate ({before.status.value} before)"
        await self._audit(
            AuditAction.status_change,
            outcome.version,
            {"status": before.status.value},
            {"status": outcome.version.status.value},
            reason[:4000],
            key,
        )

    async def _publish(self, payload: ModelValidated | ModelRejected, event_id: str | None) -> None:
        if self.bus is None:
            return
        await self.bus.publish(payload, event_id=event_id)


def registration_for(event: CloudEvent[ModelTrained]) -> VersionCreate:
    """The registration a `model.trained` event asks for; InvalidRequest if the registry cannot take it."""
    trained = event.data
    try:
        return VersionCreate(
            semver=trained.semver,
            signature=trained.signature,
            metrics=trained.metrics,
            lineage=trained.lineage,
            run_id=trained.run_id,
            source_event_id=event.id,
            source=event.source,
            task=trained.task,
            class_names=trained.class_names,
            artifacts={ArtifactRole(r): a for r, a in trained.artifacts.items() if r in _KNOWN_ROLES},
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise InvalidRequest(f"model.trained event {event.id} cannot be registered: {problems}") from None


def _unknown_roles(trained: ModelTrained) -> list[str]:
    unknown = sorted(set(trained.artifacts) - _KNOWN_ROLES)
    if not unknown:
        return []
    return [f"artifact role {r!r} is not one the registry knows ({', '.join(sorted(_KNOWN_ROLES))})" for r in unknown]
