"""The rollout state machine: deploy, canary analysis, promotion, rollback, retirement, wake-up.

Every change to a model runs under that model's lock, is recorded before it is announced, and
ends by writing the model's route to the routes bucket the gateways follow. Outcome events carry
deterministic ids, so a redelivered trigger that runs again publishes nothing new (JetStream keeps
one copy per id).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Literal

import anyio
import httpx
import numpy as np

from gallery_common.artifacts import ArtifactStore
from gallery_common.contracts.serving_metrics import Scrape
from gallery_common.db import as_utc, utcnow
from gallery_common.errors import Conflict, GalleryError, NotFound, Unavailable
from gallery_common.events import (
    FP32_VARIANT,
    ArtifactRef,
    ModelDegraded,
    ModelDeployed,
    ModelDeploymentFailed,
    ModelOptimized,
    ModelRolledBack,
    Payload,
)
from gallery_common.projects import DEFAULT_PROJECT
from gallery_common.registry_client import RegistryClient
from gallery_common.telemetry import get_logger

from ..gateway.routes import ModelRoute, RoutePolicy
from ..runtime.base import DeploymentStatus, ReportsChanges, Runtime, RuntimeState, ServerSpec, deployment_id
from ..runtime.node_hardware import KnowsNodeHardware, NodeHardware, local_node_hardware
from . import canary
from .policy import DeploymentPolicy, PolicyStore
from .records import SERVING, DeploymentRecord, DeploymentStore, Stage, VariantRecord, due
from .routing import GatewayRoutes, build_route
from .settings import DeployerSettings
from .variant_choice import VariantChoice, choose_variant

Publish = Callable[[Payload, str], Awaitable[None]]
ConfirmArtifact = Callable[[str, int, ArtifactRef], Awaitable[None]]  # the registry holds the file for model:version
REASON_CHARS = 400  # reasons go into events and the registry's alias history; evidence stays in the monitor


def shorten(reason: str, limit: int = REASON_CHARS) -> str:
    """`reason` cut to `limit` characters, marked when cut."""
    return reason if len(reason) <= limit else reason[: limit - 1].rstrip() + "…"


log = get_logger(__name__)


def explainer_env(explainer: dict[str, Any] | None) -> dict[str, str]:
    """The model server's settings for a version's explainer artifact; none without one (it then answers
    explain requests with 404)."""
    if not explainer:
        return {}
    ref = ArtifactRef.model_validate(explainer)
    return {"GALLERY_EXPLAINER_URI": ref.uri, "GALLERY_EXPLAINER_SHA256": ref.sha256}


class Controller:
    """Moves each model between its deployments; the REST API and the event handlers both call it."""

    def __init__(
        self,
        settings: DeployerSettings,
        store: DeploymentStore,
        runtime: Runtime,
        routes: GatewayRoutes,
        registry: RegistryClient | None,
        artifacts: ArtifactStore,
        publish: Publish,
        fence: Callable[[], object] | None = None,
    ) -> None:
        """`fence()` raises when this process may no longer act (it lost the deployer's leadership)."""
        self.settings = settings
        self.fence = fence or (lambda: None)
        self.store = store
        self.runtime = runtime
        self.routes = routes
        self.registry = registry
        self.artifacts = artifacts
        self.publish = publish
        self.limits = canary.Thresholds(
            settings.canary_max_error_rate,
            settings.canary_max_p99_ratio,
            settings.canary_p99_slack_ms,
            settings.canary_min_agreement,
            settings.canary_min_requests,
            settings.canary_min_latency_requests,
        )
        self.policies = PolicyStore(store.engine)
        self._locks: dict[str, asyncio.Lock] = {}
        # what changes a model's route beyond its records (a running experiment's split), applied last
        self.route_overlay: Callable[[str, ModelRoute], ModelRoute] | None = None
        # models whose newly validated versions wait (a running experiment's arms must not change under it)
        self.holds_validated: Callable[[str], bool] = lambda model: False
        self._baselines: dict[str, tuple[Scrape, Scrape]] = {}  # canary id → (canary's, production's) at start
        self._tasks: dict[tuple[str, int], str] = {}  # (model, version) → the task the registry records
        token = settings.model_server_token.get_secret_value() if settings.model_server_token else None
        self._http = httpx.AsyncClient(timeout=30.0, headers={"Authorization": f"Bearer {token}"} if token else None)
        if isinstance(runtime, ReportsChanges):
            runtime.watch(self._replicas_changed)

    def lock(self, model: str) -> asyncio.Lock:
        return self._locks.setdefault(model, asyncio.Lock())

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args)

    # -- deploy -----------------------------------------------------------------------------------

    async def deploy(
        self,
        model: str,
        version: int,
        artifact: ArtifactRef,
        *,
        validation_split: ArtifactRef | None = None,
        explainer: ArtifactRef | None = None,
        canary_percent: float | None = None,
        variant: str = FP32_VARIANT,
        reason: str = "model.validated",
        project: str = DEFAULT_PROJECT,
    ) -> DeploymentRecord:
        """Run `model:version`: straight to production for a model's first version, else as a canary.

        `validation_split` is replayed in the canary analysis; `explainer` goes to the version's model
        servers, which answer explain requests with it."""
        async with self.lock(model):
            ident = deployment_id(model, version, "")
            existing = await self._db(self.store.get, ident)
            if existing is not None and existing.stage in SERVING:
                return existing  # a redelivered trigger: already running
            serving = await self._db(self.store.for_model, model, SERVING)
            production = next((r for r in serving if r.stage == Stage.production), None)
            if any(r.stage == Stage.canary for r in serving):
                raise Conflict(f"model {model!r} already has a canary; promote or roll it back first")
            policy = (await self._db(self.policies.get, model)).resolved(self.settings)
            record = DeploymentRecord(
                id=ident,
                model=model,
                project=project,
                version=version,
                variant=variant,
                artifact_uri=artifact.uri,
                artifact_sha256=artifact.sha256,
                validation_split=validation_split.model_dump(mode="json") if validation_split else None,
                explainer=explainer.model_dump(mode="json") if explainer else None,
                stage=Stage.canary if production else Stage.production,
                replicas=policy.replicas or 1,
                policy=policy.model_dump(mode="json"),
                reason=reason,
            )
            status = await self._start(record)
            if status.state is not RuntimeState.ready:
                return await self._failed(
                    record, status.detail or f"not ready within {self.settings.ready_timeout_s:g} s"
                )
            record.state, record.fallback = status.state.value, status.fallback
            if production is None:
                record.traffic_percent = 100.0
                await self._db(self.store.save, record)
                await self._move_alias(model, version, f"first version deployed ({reason})")
            else:
                share = canary_percent if canary_percent is not None else (policy.canary_percent or 10.0)
                record.traffic_percent = share
                record.analysis_due_at = utcnow() + timedelta(seconds=self.settings.canary_window_s)
                production.traffic_percent = 100.0 - share
                await self._db(self.store.save, production)
                await self._db(self.store.save, record)
                self._baselines[record.id] = await self._snapshots(record, production)
            await self.sync_routes(model)
            await self._announce_deployed(record, status)
            return record

    def _policy(self, record: DeploymentRecord) -> DeploymentPolicy:
        return DeploymentPolicy.model_validate(record.policy or {}).resolved(self.settings)

    async def _start(self, record: DeploymentRecord) -> DeploymentStatus:
        spec = self._spec(record)
        timeout = self.settings.ready_timeout_s
        if spec.gpu and self.runtime.name == "kubernetes":
            timeout += self.settings.kubernetes.gpu_fallback_timeout_s  # room for the GPU → CPU fallback
        try:
            await self.runtime.apply(spec)
            return await self.runtime.wait_ready(record.id, timeout)
        except GalleryError as exc:
            return DeploymentStatus(record.id, RuntimeState.failed, record.replicas, 0, detail=exc.message)

    def _spec(self, record: DeploymentRecord) -> ServerSpec:
        policy = self._policy(record)
        return ServerSpec(
            deployment_id=record.id,
            model=record.model,
            version=record.version,
            variant=record.variant,
            artifact_uri=record.artifact_uri,
            artifact_sha256=record.artifact_sha256,
            replicas=record.replicas,
            gpu=policy.gpu,
            gpu_memory_mb=policy.gpu_memory_mb,
            cpu=policy.cpu,
            memory=policy.memory,
            max_batch_size=policy.max_batch_size or self.settings.max_batch_size,
            max_queue_delay_ms=(
                self.settings.max_queue_delay_ms if policy.max_queue_delay_ms is None else policy.max_queue_delay_ms
            ),
            intra_op_threads=policy.intra_op_threads,
            execution_providers=tuple(policy.execution_providers),
            env=explainer_env(record.explainer) | policy.provider_env(),
        )

    async def _failed(self, record: DeploymentRecord, reason: str) -> DeploymentRecord:
        record.stage, record.state, record.reason, record.traffic_percent = Stage.failed, "failed", reason, 0.0
        await self._db(self.store.save, record)
        await self.runtime.delete(record.id)
        log.warning("deployment_failed", deployment=record.id, reason=reason)
        payload = ModelDeploymentFailed(
            project=record.project, model=record.model, version=record.version, deployment_id=record.id, reason=reason
        )
        await self.publish(payload, f"deployment_failed:{record.model}:{record.version}:{record.variant}")
        return record

    async def _announce_deployed(
        self, record: DeploymentRecord, status: DeploymentStatus | None = None, *, changed: bool = False
    ) -> None:
        """`model.deployed` of `record`; `changed`: a serving version's file changed (another variant), whose event
        id carries when, so a version that serves a variant again within the bus's duplicate window is
        announced again."""
        if status is None:  # a promotion: the runtime still says which provider serves and why
            try:
                status = await self.runtime.status(record.id)
            except GalleryError:
                status = None
        payload = ModelDeployed(
            project=record.project,
            model=record.model,
            version=record.version,
            deployment_id=record.id,
            variant=record.variant,
            artifact=ArtifactRef(uri=record.artifact_uri, sha256=record.artifact_sha256),
            stage="canary" if record.stage == Stage.canary else "production",
            traffic_percent=record.traffic_percent,
            runtime=self.runtime.name,
            endpoint=f"{self.settings.gateway_url.rstrip('/')}/v2/models/{record.model}",
            fallback=(status.fallback if status else None) or record.fallback,
            execution_provider=status.execution_provider if status else None,
        )
        key = f"deployed:{record.model}:{record.version}:{record.variant}:{record.stage}"
        if changed:
            key += f":{int(as_utc(record.updated_at).timestamp() * 1000)}"
        await self.publish(payload, key)

    # -- lifecycle events --------------------------------------------------------------------------

    async def deploy_validated(
        self,
        model: str,
        version: int,
        artifact: ArtifactRef,
        *,
        validation_split: ArtifactRef | None = None,
        explainer: ArtifactRef | None = None,
        project: str = DEFAULT_PROJECT,
    ) -> DeploymentRecord | None:
        """Roll out a version the validation gate passed: its model's first goes straight to production, a
        newer one becomes the canary (superseding the canary there is). Returns None, changing nothing, for
        a version taken out of service before (only a person brings it back) or not newer than what serves.
        While the model runs an experiment the version is held (stage `held`, nothing started) and rolled out
        when the experiment ends (`release_held`): a new canary would replace one of the experiment's arms."""
        earlier = await self._db(self.store.get, deployment_id(model, version, ""))
        if earlier is not None and earlier.stage == Stage.rolled_back:
            log.info("validated_version_was_rolled_back", model=model, version=version, reason=earlier.reason)
            return None
        serving = await self._db(self.store.for_model, model, SERVING)
        if any(r.version >= version for r in serving):
            log.info("validated_version_not_newer", model=model, version=version)
            return None
        if self.holds_validated(model):
            return await self._hold(model, version, artifact, validation_split, explainer, project)
        return await self._roll_out(
            model, version, artifact, validation_split, explainer, FP32_VARIANT, "model.validated", project
        )

    async def _roll_out(
        self,
        model: str,
        version: int,
        artifact: ArtifactRef,
        validation_split: ArtifactRef | None,
        explainer: ArtifactRef | None,
        variant: str,
        reason: str,
        project: str,
    ) -> DeploymentRecord:
        serving = await self._db(self.store.for_model, model, SERVING)
        current = next((r for r in serving if r.stage == Stage.canary), None)
        if current is not None:
            await self.rollback(model, f"superseded by version {version}", version=current.version)
        return await self.deploy(
            model,
            version,
            artifact,
            validation_split=validation_split,
            explainer=explainer,
            variant=variant,
            reason=reason,
            project=project,
        )

    async def _hold(
        self,
        model: str,
        version: int,
        artifact: ArtifactRef,
        validation_split: ArtifactRef | None,
        explainer: ArtifactRef | None,
        project: str,
    ) -> DeploymentRecord:
        """Keep a validated version for later: the newest held version of a model is the one rolled out."""
        async with self.lock(model):
            for older in await self._db(self.store.for_model, model, [Stage.held]):
                if older.version < version:
                    older.stage, older.reason = Stage.rolled_back, f"superseded by version {version} while held"
                    await self._db(self.store.save, older)
            record = DeploymentRecord(
                id=deployment_id(model, version, ""),
                model=model,
                project=project,
                version=version,
                artifact_uri=artifact.uri,
                artifact_sha256=artifact.sha256,
                validation_split=validation_split.model_dump(mode="json") if validation_split else None,
                explainer=explainer.model_dump(mode="json") if explainer else None,
                stage=Stage.held,
                state=Stage.held.value,
                reason=f"validated while an experiment on {model} runs: rolled out when it ends",
            )
            record = await self._db(self.store.save, record)
        log.info("validated_version_held", model=model, version=version)
        return record

    async def release_held(self, model: str) -> DeploymentRecord | None:
        """Roll out the newest version held while the model's experiment ran (with the variant the optimizer
        chose for it meanwhile), as its model.validated would have; None when none is held."""
        held = await self._db(self.store.for_model, model, [Stage.held])
        if not held:
            return None
        newest = held[0]
        serving = await self._db(self.store.for_model, model, SERVING)
        if any(r.version >= newest.version for r in serving):
            newest.stage, newest.reason = Stage.retired, "a version as new or newer serves already"
            await self._db(self.store.save, newest)
            return None
        log.info("held_version_released", model=model, version=newest.version)
        return await self._roll_out(
            model,
            newest.version,
            ArtifactRef(uri=newest.artifact_uri, sha256=newest.artifact_sha256),
            ArtifactRef.model_validate(newest.validation_split) if newest.validation_split else None,
            ArtifactRef.model_validate(newest.explainer) if newest.explainer else None,
            newest.variant,
            f"model.validated, held until the experiment on {model} ended",
            newest.project,
        )

    async def held_models(self) -> list[str]:
        """Models with a version held for an experiment's end."""
        return sorted({r.model for r in await self._db(self.store.all, [Stage.held])})

    async def roll_back_degraded(self, model: str, version: int, reason: str) -> DeploymentRecord | None:
        """Take a version that broke an SLO or drifted out of service; None when it no longer serves (rolled
        back already) or has nothing to fall back to."""
        try:
            return await self.rollback(model, reason, version=version)
        except (NotFound, Conflict) as exc:
            log.warning("degraded_not_rolled_back", model=model, version=version, reason=exc.message)
            return None

    async def answer_degraded(self, degraded: ModelDegraded, confirm: ConfirmArtifact) -> DeploymentRecord | None:
        """What a `model.degraded` does. An optimized variant's answers broke the quality SLO while the version
        serves that variant: the version serves its own FP32 model instead (`confirm`: the registry's word on the
        file, as for a variant chosen by hand), unless its policy says `roll_back`, or FP32 cannot serve. A
        variant that no longer serves is left alone. Anything else rolls the version back."""
        reason = f"{degraded.kind}: {degraded.reason}"
        if degraded.kind == "quality" and degraded.of_optimized_variant():
            model, version, variant = degraded.model, degraded.version, degraded.variant
            record = await self._db(self.store.get, deployment_id(model, version, ""))
            if record is not None and record.stage in SERVING and record.variant != variant:
                log.info("degraded_variant_not_serving", model=model, version=version, variant=variant)
                return record
            # not rolled in again on the deployer's own initiative (a later model.optimized), only by hand
            if record is not None and record.variant == variant:
                served = ArtifactRef(uri=record.artifact_uri, sha256=record.artifact_sha256).model_dump(mode="json")
                await self._db(self.store.withdraw_variant, model, version, variant, shorten(reason), served)
            policy = await self._db(self.policies.get, model)
            if record is not None and record.stage in SERVING and policy.on_variant_breach == "serve_fp32":
                try:
                    fp32 = await self.variant_artifact(model, version, FP32_VARIANT)
                    await confirm(model, version, fp32)
                    why = shorten(f"FP32 instead of {variant}, whose answers broke the quality SLO: {degraded.reason}")
                    return await self.serve_variant(model, version, FP32_VARIANT, fp32, why)
                except (NotFound, Conflict) as exc:
                    log.warning("fp32_not_served_instead", model=model, version=version, reason=exc.message)
                    reason = f"{reason}; FP32 could not serve instead: {exc.message}"
        return await self.roll_back_degraded(degraded.model, degraded.version, reason)

    async def withdrawn(self, model: str, version: int, variant: str) -> bool:
        """Whether `variant` of the version was taken out of service because its answers broke the quality SLO
        (a later `model.optimized` does not roll it in again; a person may serve it by hand)."""
        built = {v.name: v for v in await self._db(self.store.variants, model, version)}
        found = built.get(variant)
        if found is None or found.withdrawn is None:
            return False
        log.warning("withdrawn_variant_not_rolled_in", model=model, version=version, variant=variant)
        return True

    # -- optimized variant -------------------------------------------------------------------------

    async def variant_for(self, optimized: ModelOptimized) -> VariantChoice:
        """The variant of `optimized` recommended for the hardware the version's replicas run on
        (`variant_choice.py`); the generic recommendation, saying why, where there is none."""
        record = await self._db(self.store.get, deployment_id(optimized.model, optimized.version, ""))
        spec = self._spec(record) if record is not None else None
        nodes: list[NodeHardware] = []
        unknown = "the version does not serve, so no node runs it"
        if spec is not None and isinstance(self.runtime, KnowsNodeHardware):
            unknown = "the runtime named no node the replicas may run on"
            try:
                nodes = await self.runtime.node_hardware(spec)
            except GalleryError as exc:
                unknown = f"the nodes the replicas may run on are unknown ({exc.message})"
        elif spec is not None:
            nodes = await anyio.to_thread.run_sync(local_node_hardware)
        providers = self._policy(record).execution_providers if record is not None else []
        choice = choose_variant(optimized, nodes, providers, no_nodes=unknown)
        log.info(
            "variant_chosen",
            model=optimized.model,
            version=optimized.version,
            variant=choice.variant,
            target=choice.target,
            reason=choice.reason,
        )
        return choice

    async def remember_variants(self, optimized: ModelOptimized) -> None:
        """Keep the variants `optimized` built for its version, so a person can serve another one later."""
        rows = [
            VariantRecord(
                model=optimized.model,
                version=optimized.version,
                name=v.name,
                artifact=v.artifact.model_dump(mode="json"),
                metrics=dict(v.metrics),
                cpu_target=v.cpu_target,
                recommended=v.name == optimized.recommended,
            )
            for v in optimized.variants
            if v.artifact is not None and v.error is None
        ]
        await self._db(self.store.remember_variants, optimized.model, optimized.version, rows)

    async def variant_artifact(self, model: str, version: int, variant: str) -> ArtifactRef:
        """The file of `variant` of `model:version`: FP32 is the version's own ONNX (the registry's), any other
        one its `model.optimized` built; NotFound names the variants there are."""
        if variant == FP32_VARIANT:
            if self.registry is None:
                raise Unavailable("the deployer has no registry configured (GALLERY_REGISTRY_URL)")
            found = await anyio.to_thread.run_sync(self.registry.get_version, model, version)
            onnx = found.artifact("onnx")
            if onnx is None:
                raise NotFound(f"{model}:{version} has no onnx artifact in the registry")
            return onnx
        built = {v.name: v for v in await self._db(self.store.variants, model, version)}
        if variant not in built:
            there = ", ".join([FP32_VARIANT, *sorted(set(built) - {FP32_VARIANT})])
            raise NotFound(f"{model}:{version} has no variant {variant!r}; it has {there}")
        return ArtifactRef.model_validate(built[variant].artifact)

    async def serve_variant(
        self, model: str, version: int, variant: str, artifact: ArtifactRef, reason: str
    ) -> DeploymentRecord:
        """Serve `variant` (its `artifact`, from `variant_artifact`) for a version that serves, or is held, by
        a rolling update; Conflict when the version does not serve or the variant never became ready (the
        version then keeps serving what it served). A variant withdrawn for its answers is no longer withdrawn."""
        record = await self._db(self.store.get, deployment_id(model, version, ""))
        if record is None or (record.stage not in SERVING and record.stage != Stage.held):
            stage = f" ({record.stage})" if record is not None else ""
            raise Conflict(f"{model}:{version} does not serve{stage}: only a serving version's variant can change")
        if record.variant == variant and record.artifact_sha256 == artifact.sha256:
            return record
        rolled = await self.roll_variant(model, version, variant, artifact, reason)
        if rolled is None:
            raise Conflict(
                f"variant {variant} of {model}:{version} did not become ready; it keeps serving {record.variant}"
            )
        await self._db(self.store.withdraw_variant, model, version, variant, None)  # chosen again: no longer withdrawn
        return rolled

    async def roll_variant(
        self, model: str, version: int, variant: str, artifact: ArtifactRef, reason: str | None = None
    ) -> DeploymentRecord | None:
        """Serve `variant` instead of the version's current artifact, by a rolling update; `reason` (why this
        variant) goes on the deployment's record."""
        async with self.lock(model):
            record = await self._db(self.store.get, deployment_id(model, version, ""))
            if record is not None and record.stage == Stage.held:
                # rolled out with this variant when the experiment that holds it ends
                record.variant, record.artifact_uri, record.artifact_sha256 = variant, artifact.uri, artifact.sha256
                return await self._db(self.store.save, record)  # type: ignore[no-any-return]
            if record is None or record.stage not in SERVING:
                log.info("optimized_version_not_serving", model=model, version=version)
                return None
            if record.artifact_sha256 == artifact.sha256:
                return record
            previous = (record.variant, record.artifact_uri, record.artifact_sha256)
            record.variant, record.artifact_uri, record.artifact_sha256 = variant, artifact.uri, artifact.sha256
            status = await self._start(record)
            # a model scaled to zero takes the new file asleep (a replica woken by a request stops): the
            # gateway wakes it with that file on its next request
            asleep = record.replicas == 0 and status.state is RuntimeState.scaled_to_zero
            if status.state is not RuntimeState.ready and not asleep:
                # the old replicas kept serving during the roll; put the old artifact back in the spec
                record.variant, record.artifact_uri, record.artifact_sha256 = previous
                await self._start(record)
                reason = f"variant {variant} did not become ready: {status.detail}"
                payload = ModelDeploymentFailed(
                    project=record.project, model=model, version=version, deployment_id=record.id, reason=reason
                )
                await self.publish(payload, f"deployment_failed:{model}:{version}:{variant}")
                return None
            record.state = status.state.value
            if reason is not None:
                record.reason = reason
            if record.stage == Stage.canary:
                # a new artifact is a new candidate: its window starts now
                record.analysis_due_at = utcnow() + timedelta(seconds=self.settings.canary_window_s)
                production = await self._production(model)
                if production is not None:
                    self._baselines[record.id] = await self._snapshots(record, production)
            record = await self._db(self.store.save, record)
            await self.sync_routes(model)
            await self._announce_deployed(record, status, changed=True)
            return record

    async def _production(self, model: str) -> DeploymentRecord | None:
        serving = await self._db(self.store.for_model, model, [Stage.production])
        return serving[0] if serving else None

    # -- canary analysis, promotion, rollback -------------------------------------------------------

    async def _snapshots(self, canary_record: DeploymentRecord, baseline: DeploymentRecord) -> tuple[Scrape, Scrape]:
        return (
            await canary.snapshot(self._http, await self._endpoints(canary_record.id)),
            await canary.snapshot(self._http, await self._endpoints(baseline.id)),
        )

    async def _endpoints(self, ident: str) -> tuple[str, ...]:
        try:
            return (await self.runtime.status(ident)).endpoints
        except NotFound:
            return ()

    async def read_metrics(self, model: str, version: int) -> Scrape:
        """The /metrics pages of the replicas of `model:version` that answer now."""
        return await canary.snapshot(self._http, await self._endpoints(deployment_id(model, version, "")))

    async def analyse(self, model: str) -> canary.Verdict:
        """Compare the canary with production over the window so far (also what the API shows)."""
        serving = await self._db(self.store.for_model, model, SERVING)
        candidate = next((r for r in serving if r.stage == Stage.canary), None)
        production = next((r for r in serving if r.stage == Stage.production), None)
        if candidate is None or production is None:
            raise NotFound(f"model {model!r} has no canary to analyse")
        start = self._baselines.get(candidate.id, (Scrape(), Scrape()))
        now = await self._snapshots(candidate, production)
        agreement = None
        rows = await canary.load_replay_rows(
            self.artifacts, candidate.validation_split, self.settings.canary_replay_rows
        )
        canary_urls, baseline_urls = await self._endpoints(candidate.id), await self._endpoints(production.id)
        if rows is not None and canary_urls and baseline_urls:
            # Each server refuses a request larger than its max_batch_size: replay in chunks both accept.
            chunk = min(self._spec(candidate).max_batch_size, self._spec(production).max_batch_size)
            agreement = await canary.replay_agreement(
                self._http,
                model,
                canary_urls[0],
                baseline_urls[0],
                rows,
                chunk=chunk,
                regression=isinstance(rows, np.ndarray) and await self._is_regressor(model, candidate.version),
            )
        windows = now[0].since(start[0]).overall(), now[1].since(start[1]).overall()
        verdict = canary.judge(*windows, agreement, self.limits)
        return verdict

    async def _task_of(self, model: str, version: int) -> str:
        """The task the registry records for the version (a version's task never changes: asked once);
        classification without a registry to ask."""
        key = (model, version)
        task = self._tasks.get(key)
        if task is None:
            registry = self.registry
            if registry is None:
                return "classification"
            registered = await anyio.to_thread.run_sync(lambda: registry.get_version(model, version))
            task = self._tasks[key] = registered.task or "classification"
        return task

    async def _is_regressor(self, model: str, version: int) -> bool:
        """Whether the version is a regressor (its canary's answers are compared as predictions, not top
        classes); an unreachable registry fails the analysis rather than compare a regressor by class."""
        return await self._task_of(model, version) == "regression"

    async def _route_task(self, model: str, version: int) -> Literal["classification", "regression"]:
        """The task the gateways are told for the model's route (its newest serving version's): a registry
        that does not answer leaves the route a classifier's, logged, rather than hold the route back."""
        try:
            task = await self._task_of(model, version)
        except GalleryError as exc:
            log.warning("route_task_unknown", model=model, version=version, reason=exc.message)
            return "classification"
        return "regression" if task == "regression" else "classification"

    async def judge_due_canaries(self) -> None:
        """Judge every canary whose window has ended: promote it or roll it back."""
        for record in await self._db(self.store.all, [Stage.canary]):
            if not due(record.analysis_due_at):
                continue
            verdict = await self.analyse(record.model)
            log.info("canary_judged", model=record.model, version=record.version, **verdict.as_dict())
            if verdict.passed and self._policy(record).auto_promote:
                await self.promote(record.model, "canary analysis passed")
            elif not verdict.passed:
                await self.rollback(record.model, "canary analysis failed: " + "; ".join(verdict.reasons))
            else:
                record.analysis_due_at = None
                await self._db(self.store.save, record)

    async def promote(self, model: str, reason: str) -> DeploymentRecord:
        """The canary takes all traffic and the `production` alias; the old version drains as a fallback."""
        async with self.lock(model):
            serving = await self._db(self.store.for_model, model, SERVING)
            candidate = next((r for r in serving if r.stage == Stage.canary), None)
            if candidate is None:
                raise NotFound(f"model {model!r} has no canary to promote")
            candidate = await self._settle(serving, candidate, reason, shorten(f"promoted: {reason}"))
            log.info("promoted", model=model, version=candidate.version, reason=reason)
            return candidate

    async def settle(self, model: str, version: int, reason: str) -> DeploymentRecord:
        """`version` takes all traffic and the `production` alias (with `reason`); every other version
        that serves drains as a fallback, as a promotion's old production version does."""
        async with self.lock(model):
            serving = await self._db(self.store.for_model, model, SERVING)
            winner = next((r for r in serving if r.version == version and r.stage != Stage.previous), None)
            if winner is None:
                raise NotFound(f"model {model!r} does not serve version {version}")
            return await self._settle(serving, winner, reason, shorten(reason))

    async def _settle(
        self, serving: list[DeploymentRecord], winner: DeploymentRecord, reason: str, alias_reason: str
    ) -> DeploymentRecord:
        for record in serving:
            if record is not winner and record.stage in (Stage.production, Stage.canary):
                record.stage, record.traffic_percent, record.analysis_due_at = Stage.previous, 0.0, None
                record.retire_at = utcnow() + timedelta(seconds=self.settings.drain_s)
                await self._db(self.store.save, record)
        moved = winner.stage != Stage.production
        winner.stage, winner.traffic_percent, winner.analysis_due_at = Stage.production, 100.0, None
        winner.reason = reason
        winner = await self._db(self.store.save, winner)
        self._baselines.pop(winner.id, None)
        await self.sync_routes(winner.model)
        await self._move_alias(winner.model, winner.version, alias_reason)
        if moved:
            await self._announce_deployed(winner)
        return winner

    async def rollback(self, model: str, reason: str, version: int | None = None) -> DeploymentRecord:
        """Take the canary (or, without one, the production version) out of service for the last good one."""
        reason = shorten(reason)
        async with self.lock(model):
            serving = await self._db(self.store.for_model, model, SERVING)
            candidate = next((r for r in serving if r.stage == Stage.canary), None)
            production = next((r for r in serving if r.stage == Stage.production), None)
            if candidate is not None and (version is None or version == candidate.version):
                bad, good = candidate, production
            elif production is not None and (version is None or version == production.version):
                bad, good = production, await self._last_good(model, production.version)
            else:
                finished = await self._finish_interrupted_rollback(model, version, production)
                if finished is not None:
                    return finished
                raise NotFound(f"model {model!r} does not serve version {version} as canary or production")
            if good is None:
                raise Conflict(f"model {model!r} has no earlier good version to roll back to from {bad.version}")
            if good.stage != Stage.production:
                good = await self._bring_back(good)
            good.stage, good.traffic_percent, good.retire_at = Stage.production, 100.0, None
            good = await self._db(self.store.save, good)
            bad.stage, bad.traffic_percent, bad.reason, bad.analysis_due_at = Stage.rolled_back, 0.0, reason, None
            await self._db(self.store.save, bad)
            await self.sync_routes(model)
            await self.runtime.delete(bad.id)
            await self._announce_rollback(bad, good, moved_alias=bad is not candidate)
            return good

    async def _finish_interrupted_rollback(
        self, model: str, version: int | None, production: DeploymentRecord | None
    ) -> DeploymentRecord | None:
        """A redelivered rollback whose traffic already moved: redo the alias move and the event (both idempotent)."""
        if version is None or production is None:
            return None
        bad = await self._db(self.store.get, deployment_id(model, version, ""))
        if bad is None or bad.stage != Stage.rolled_back:
            return None
        await self._announce_rollback(bad, production, moved_alias=bad.version > production.version)
        return production

    async def _announce_rollback(self, bad: DeploymentRecord, good: DeploymentRecord, *, moved_alias: bool) -> None:
        reason = bad.reason or "rolled back"
        if moved_alias:
            await self._move_alias(bad.model, good.version, shorten(f"rolled back from {bad.version}: {reason}"))
        payload = ModelRolledBack(
            project=bad.project, model=bad.model, version=bad.version, to_version=good.version, reason=reason
        )
        await self.publish(payload, f"rolled_back:{bad.model}:{bad.version}")
        log.warning("rolled_back", model=bad.model, version=bad.version, to_version=good.version, reason=reason)

    async def _last_good(self, model: str, below: int) -> DeploymentRecord | None:
        """The newest earlier version that served production and was not rolled back."""
        for record in await self._db(self.store.for_model, model, [Stage.previous, Stage.retired]):
            if record.version < below:
                return record
        return None

    async def _bring_back(self, record: DeploymentRecord) -> DeploymentRecord:
        """A retired version runs again (a `previous` one still runs) before it takes traffic."""
        if record.stage == Stage.previous:
            return record
        status = await self._start(record)
        if status.state is not RuntimeState.ready:
            raise GalleryError(f"version {record.version} could not be started again: {status.detail}")
        record.state = status.state.value
        return record

    async def retire_drained(self) -> None:
        """Stop previous versions whose drain period has ended."""
        for record in await self._db(self.store.all, [Stage.previous]):
            if not due(record.retire_at):
                continue
            async with self.lock(record.model):
                record.stage, record.retire_at = Stage.retired, None
                await self._db(self.store.save, record)
                await self.sync_routes(record.model)
                await self.runtime.delete(record.id)
                log.info("retired", model=record.model, version=record.version)

    async def set_canary_weight(self, model: str, percent: float) -> None:
        """Move the split between production and the canary by hand."""
        async with self.lock(model):
            serving = await self._db(self.store.for_model, model, SERVING)
            candidate = next((r for r in serving if r.stage == Stage.canary), None)
            production = next((r for r in serving if r.stage == Stage.production), None)
            if candidate is None or production is None:
                raise NotFound(f"model {model!r} has no canary whose weight could be set")
            candidate.traffic_percent, production.traffic_percent = percent, 100.0 - percent
            await self._db(self.store.save, candidate)
            await self._db(self.store.save, production)
            await self.sync_routes(model)

    async def scale(self, model: str, version: int, replicas: int) -> DeploymentStatus:
        async with self.lock(model):
            record = await self._db(self.store.get, deployment_id(model, version, ""))
            if record is None or record.stage not in SERVING:
                raise NotFound(f"model {model!r} does not serve version {version}")
            record.replicas = replicas
            await self._db(self.store.save, record)
            status = await self.runtime.scale(record.id, replicas)
            if replicas > 0:
                status = await self.runtime.wait_ready(record.id, self.settings.ready_timeout_s)
            await self.sync_routes(model)
            return status

    async def wake(self, model: str) -> None:
        """Start the replicas of a model scaled to zero and route to them (the gateway waits on this)."""
        async with self.lock(model):
            for record in await self._db(self.store.for_model, model, SERVING):
                status = await self.runtime.status(record.id)
                if status.state is RuntimeState.scaled_to_zero:
                    await self.runtime.scale(record.id, max(1, record.replicas))
                    await self.runtime.wait_ready(record.id, self.settings.ready_timeout_s)
            await self.sync_routes(model)

    # -- gateway and registry ------------------------------------------------------------------------

    async def restore(self) -> None:
        """After a restart: make every serving deployment run again (a no-op where it still runs) and route it."""
        models = set()
        for record in await self._db(self.store.all, list(SERVING)):
            models.add(record.model)
            try:
                status = await self.runtime.status(record.id)
            except NotFound:
                status = await self._start(record)
            log.info("restored", deployment=record.id, stage=record.stage, state=status.state.value)
        for model in sorted(models):
            try:
                await self.sync_routes(model)
            except GalleryError as exc:  # NATS down for longer than the publish deadline; the next change routes
                log.warning("restore_route_failed", model=model, reason=exc.message)

    async def _replicas_changed(self, status: DeploymentStatus) -> None:
        # replicas came, went or restarted: route to what is ready now, before a leaving one stops
        await self.sync_routes_of(status.deployment_id)

    async def sync_routes_of(self, ident: str) -> None:
        """Re-route the model a deployment belongs to (its replicas changed)."""
        record = await self._db(self.store.get, ident)
        if record is not None:
            try:
                await self.sync_routes(record.model)
            except GalleryError as exc:
                log.warning("route_update_failed", model=record.model, reason=exc.message)

    async def sync_routes(self, model: str) -> ModelRoute | None:
        """Write the model's route (or its removal) to the routes bucket from the records and live endpoints."""
        self.fence()  # a deposed leader's replicas must not route over the new leader's
        serving = await self._db(self.store.for_model, model, SERVING)
        endpoints: dict[str, tuple[str, ...]] = {}
        grpc_endpoints: dict[str, str] = {}
        asleep = bool(serving)
        for record in serving:
            try:
                status = await self.runtime.status(record.id)
            except NotFound:
                asleep = False
                continue
            endpoints[record.id] = status.endpoints
            grpc_endpoints.update(status.grpc_endpoints)
            asleep = asleep and status.state is RuntimeState.scaled_to_zero
        wake_url = f"{self.settings.resolved_public_url}/api/v1/deployments/{model}/wake"
        recorded = (await self._db(self.policies.get, model)).record_outcomes
        policy = RoutePolicy(asleep=asleep, wake_url=wake_url, record_outcomes=recorded)
        project = serving[0].project if serving else DEFAULT_PROJECT
        route = (
            ModelRoute(project=project, backends=[], policy=policy)
            if asleep
            else build_route(serving, endpoints, policy, grpc_endpoints)
        )
        if route is not None and serving:
            newest = max(record.version for record in serving)
            route = route.model_copy(update={"task": await self._route_task(model, newest)})
        if route is not None and self.route_overlay is not None:
            route = self.route_overlay(model, route)
        if route is None:
            await self.routes.delete(model)
        else:
            await self.routes.put(model, route)
        return route

    async def reroute(self, model: str) -> None:
        """Write the route of a model that serves again, after its policy changed what the route says."""
        async with self.lock(model):
            if await self._db(self.store.for_model, model, SERVING):
                await self.sync_routes(model)

    async def _move_alias(self, model: str, version: int, reason: str) -> None:
        if self.registry is None:
            return
        registry = self.registry
        await anyio.to_thread.run_sync(lambda: registry.set_alias(model, "production", version, reason))

    async def close(self) -> None:
        await self._http.aclose()
