"""Online experiments: versions of a model side by side on a split of its traffic, decided by a
sequential test as outcomes arrive.

Accuracy and reward come from `model.outcome` events (the gateway joins a client's feedback to the
version that answered); error rate and p99 from the arms' own model servers, read the way the canary
analysis reads them (their /metrics, difference since the previous read). Each batch of figures is
judged by `stats.sequential_verdict`, which stays valid however often it is looked at. A winner takes
all the traffic and the `production` alias with the evidence as the reason, the other arms drain;
"no difference" ends the experiment and moves nothing. With the `bandit` policy the split follows
Thompson sampling over the arms (each keeps its floor share) until the test decides.

While an experiment runs, it owns its model's route: the controller's route overlay gives each arm's
replicas the arm's share and asks the gateways to record outcomes.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, cast

import anyio
import numpy as np

from gallery_common.contracts.serving_metrics import Scrape, ServingCounts
from gallery_common.db import utcnow
from gallery_common.errors import Conflict, GalleryError, InvalidRequest, NotFound
from gallery_common.events import ModelExperimentConcluded, ModelOutcome, Payload
from gallery_common.projects import DEFAULT_PROJECT
from gallery_common.telemetry import get_logger

from ..deployer.controller import Controller, shorten
from ..deployer.records import SERVING, Stage
from ..gateway.routes import BackendRole, ModelRoute
from .records import (
    ArmFigures,
    ExperimentPoint,
    ExperimentRecord,
    ExperimentStatus,
    ExperimentStore,
    Metric,
    Policy,
)
from .stats import ArmOutcomes, MetricKind, TestDesign, Verdict, planned_samples_per_arm, sequential_verdict
from .stats import thompson_shares as thompson

log = get_logger(__name__)
Publish = Callable[[Payload, str], Awaitable[None]]

KINDS: dict[str, MetricKind] = {
    "accuracy": "proportion",
    "reward": "mean",
    "squared_error": "mean",  # a regressor's: each valued row's squared error, lower is better
    "error_rate": "proportion",
    "p99": "proportion",
}
HIGHER_IS_BETTER = {"accuracy": True, "reward": True, "squared_error": False, "error_rate": False, "p99": False}
FROM_SERVERS = ("error_rate", "p99")
POINT_GROWTH = 1.05  # a curve point each time the samples grew by 5 %: ~100 points from 10 to 10^6 samples
TAIL_QUANTILE = 0.99


@dataclass(frozen=True)
class ExperimentPlan:
    """What starting an experiment asks for; `versions[0]` is the control, `split` in percent."""

    model: str
    versions: list[int]
    split: list[float]
    metric: Metric
    mde: float
    alpha: float = 0.05
    max_samples_per_arm: int | None = None
    policy: Policy = "fixed"
    floor: float = 0.1

    def check(self) -> None:
        """Raise InvalidRequest for figures no test can run with."""
        if len(set(self.versions)) != len(self.versions):
            raise InvalidRequest(f"versions must differ, got {self.versions}")
        if len(self.split) != len(self.versions):
            raise InvalidRequest(f"split has {len(self.split)} shares for {len(self.versions)} versions")
        if any(share <= 0 for share in self.split) or abs(sum(self.split) - 100.0) > 0.01:
            raise InvalidRequest(f"split must be positive shares summing to 100, got {self.split}")
        if KINDS[self.metric] == "proportion" and not 0 < self.mde < 1:
            raise InvalidRequest(f"the mde of {self.metric} is a difference of proportions, in (0, 1); got {self.mde}")
        if self.policy == "bandit" and self.floor * len(self.versions) > 1:
            raise InvalidRequest(
                f"a floor of {self.floor:g} per arm over {len(self.versions)} arms is more than all the traffic"
            )

    def design(self) -> TestDesign:
        try:
            return design_of(self.metric, self.mde, self.alpha, self.max_samples_per_arm)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None

    def planned(self, design: TestDesign) -> int | None:
        """The outcomes per arm within which the test promises a decision for a true effect of `mde`; a
        proportion is planned at the worst case (a 50 % baseline), a mean has no variance to plan with yet."""
        if design.kind == "mean":
            return None
        try:
            return planned_samples_per_arm(design, challengers=len(self.versions) - 1)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None


def design_of(metric: str, mde: float, alpha: float, max_samples: int | None) -> TestDesign:
    return TestDesign(
        kind=KINDS[metric],
        mde=mde,
        alpha=alpha,
        higher_is_better=HIGHER_IS_BETTER[metric],
        max_samples_per_arm=max_samples,
    )


def outcome_figures(outcome: ModelOutcome, metric: str) -> ArmFigures | None:
    """What one outcome adds to an arm of a `metric` experiment (accuracy and a regressor's squared error: each
    row is a sample, reward: the answer is); None when it says nothing about that metric."""
    if metric == "accuracy" and outcome.correct is not None:
        hits = float(sum(outcome.correct))
        return ArmFigures(n=len(outcome.correct), total=hits, total_sq=hits)
    if metric == "squared_error" and outcome.squared_error is not None:
        errors = outcome.squared_error
        return ArmFigures(n=len(errors), total=float(sum(errors)), total_sq=float(sum(e * e for e in errors)))
    if metric == "reward" and outcome.reward is not None:
        return ArmFigures(n=1, total=outcome.reward, total_sq=outcome.reward * outcome.reward)
    return None


def tail_figures(windows: dict[int, ServingCounts], control: int) -> dict[int, ArmFigures]:
    """p99 as a proportion: each arm's share of requests slower than the control's p99 so far (the bucket
    bound it falls in). A challenger as fast as the control has ~1 % there; a slower one more."""
    quantile = windows[control].quantile(TAIL_QUANTILE)
    edges = sorted(b for b in windows[control].buckets if quantile is not None and b >= quantile)
    figures = {}
    for version, counts in windows.items():
        if not edges or not counts.buckets:
            figures[version] = ArmFigures()
            continue
        timed = max(counts.buckets.values())  # the +Inf bucket: every request the histogram timed
        slow = max(0.0, timed - counts.buckets.get(edges[0], 0.0))
        figures[version] = ArmFigures(n=int(timed), total=slow, total_sq=slow)
    return figures


class Experiments:
    """Starts, feeds, judges and ends experiments; the REST API and the outcome consumer call it."""

    def __init__(
        self,
        controller: Controller,
        store: ExperimentStore,
        publish: Publish,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.controller = controller
        self.store = store
        self.publish = publish
        self.rng = rng or np.random.default_rng()
        self._running: dict[str, ExperimentRecord] = {}  # model → its running experiment (the route overlay)
        self._locks: dict[str, asyncio.Lock] = {}
        self._last_point: dict[str, int] = {}  # experiment id → samples at its last curve point
        self._shared_at: dict[str, int] = {}  # experiment id → samples when the bandit last set the split
        self._scrapes: dict[str, dict[int, Scrape]] = {}  # experiment id → version → its servers' last read
        self._windows: dict[str, dict[int, ServingCounts]] = {}  # p99: each arm's requests since the start
        controller.route_overlay = self.route_of
        controller.holds_validated = self.is_running

    def is_running(self, model: str) -> bool:
        """The model runs an experiment: a newly validated version of it waits until the experiment ends."""
        return model in self._running

    async def _release(self, model: str) -> None:
        """Roll out the version validated while the experiment ran; a failure is logged (the version stays
        held, and the next leader's restore tries again)."""
        try:
            await self.controller.release_held(model)
        except Exception as exc:
            log.error("held_version_not_released", model=model, reason=repr(exc))

    def lock(self, experiment_id: str) -> asyncio.Lock:
        return self._locks.setdefault(experiment_id, asyncio.Lock())

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args)

    # -- the route ---------------------------------------------------------------------------------

    def route_of(self, model: str, route: ModelRoute) -> ModelRoute:
        """`route` with the running experiment's split over its arms' replicas and outcomes recorded."""
        running = self._running.get(model)
        if running is None:
            return route
        shares = {str(version): share for version, share in running.shares.items()}
        replicas = Counter(b.version for b in route.serving if b.version in shares)
        if not replicas:
            return route  # none of the arms has a ready replica: the deployments' own split serves
        backends = []
        for backend in route.backends:
            if backend.role is BackendRole.shadow:
                backends.append(backend)
                continue
            weight = 100.0 * shares[backend.version] / replicas[backend.version] if backend.version in replicas else 0.0
            backends.append(backend.model_copy(update={"weight": weight}))
        return route.model_copy(
            update={"backends": backends, "policy": route.policy.model_copy(update={"record_outcomes": True})}
        )

    async def _route(self, model: str) -> None:
        async with self.controller.lock(model):
            await self.controller.sync_routes(model)

    # -- start, stop, read -------------------------------------------------------------------------

    async def restore(self) -> None:
        """A new leader takes over the running experiments (their figures are in the records)."""
        self._running = {r.model: r for r in await self._db(self.store.all, ExperimentStatus.running)}
        for record in self._running.values():
            self._last_point[record.id] = _samples(record)
            if record.metric in FROM_SERVERS:
                self._scrapes[record.id] = await self._read_servers(record)
                self._windows[record.id] = {v: ServingCounts() for v in record.versions}
        # a leader that ended an experiment and died before rolling out what it held
        for model in await self.controller.held_models():
            if model not in self._running:
                await self._release(model)

    async def start(self, plan: ExperimentPlan) -> ExperimentRecord:
        """Run `plan` on the versions' deployments: 404 for a version that does not serve, 409 when the model
        has a running experiment already. A canary in it is no longer judged by the canary analysis."""
        plan.check()
        planned = plan.planned(plan.design())
        model = plan.model
        async with self.controller.lock(model):
            if model in self._running or await self._db(self.store.running_for, model):
                raise Conflict(f"model {model!r} already has a running experiment; stop it first")
            serving = await self._db(self.controller.store.for_model, model, SERVING)
            if not serving:
                raise NotFound(f"model {model!r} is not deployed")
            by_version = {r.version: r for r in serving if r.stage in (Stage.production, Stage.canary)}
            missing = [v for v in plan.versions if v not in by_version]
            if missing:
                raise NotFound(
                    f"model {model!r} does not serve version(s) {missing} (serving: {sorted(by_version)}); "
                    "deploy them first"
                )
            record = ExperimentRecord(
                model=model,
                project=serving[0].project,
                versions=list(plan.versions),
                split=list(plan.split),
                metric=plan.metric,
                mde=plan.mde,
                alpha=plan.alpha,
                max_samples_per_arm=plan.max_samples_per_arm,
                planned_samples_per_arm=planned,
                policy=plan.policy,
                floor=plan.floor if plan.policy == "bandit" else 0.0,
                arms={str(v): ArmFigures().model_dump() for v in plan.versions},
                shares={str(v): s / 100.0 for v, s in zip(plan.versions, plan.split, strict=True)},
            )
            for version in plan.versions:
                deployment = by_version[version]
                if deployment.analysis_due_at is not None:  # the experiment decides it, not the canary analysis
                    deployment.analysis_due_at = None
                    await self._db(self.controller.store.save, deployment)
            record = await self._db(self.store.save, record)
            if record.metric in FROM_SERVERS:
                self._scrapes[record.id] = await self._read_servers(record)
                self._windows[record.id] = {v: ServingCounts() for v in record.versions}
            self._running[model] = record
            self._last_point[record.id] = 0
            await self._db(self.store.add_point, _point(record, None))
            await self.controller.sync_routes(model)
        log.info(
            "experiment_started", experiment=record.id, model=model, versions=record.versions, metric=record.metric
        )
        return record

    async def stop(self, experiment_id: str, reason: str) -> ExperimentRecord:
        """End a running experiment by hand: the deployments' own split serves again, nothing else moves."""
        async with self.lock(experiment_id):
            record = await self._get(experiment_id)
            if record.status != ExperimentStatus.running:
                raise Conflict(f"experiment {experiment_id} is {record.status}, not running")
            record.status, record.reason, record.ended_at = ExperimentStatus.stopped, shorten(reason), utcnow()
            record = await self._end(record)
        await self._route(record.model)
        log.info("experiment_stopped", experiment=record.id, model=record.model, reason=reason)
        await self._release(record.model)
        return record

    async def _end(self, record: ExperimentRecord) -> ExperimentRecord:
        record = cast(ExperimentRecord, await self._db(self.store.save, record))
        self._running.pop(record.model, None)
        self._scrapes.pop(record.id, None)
        self._windows.pop(record.id, None)
        self._last_point.pop(record.id, None)
        self._shared_at.pop(record.id, None)
        return record

    async def _get(self, experiment_id: str) -> ExperimentRecord:
        record = await self._db(self.store.get, experiment_id)
        if record is None:
            raise NotFound(f"no experiment {experiment_id!r}")
        return cast(ExperimentRecord, record)

    async def all(self, model: str | None = None) -> list[ExperimentRecord]:
        """Every experiment, newest first; only `model`'s when given."""
        records: list[ExperimentRecord] = await self._db(self.store.all, None)
        return [r for r in records if model is None or r.model == model]

    async def get(self, experiment_id: str) -> tuple[ExperimentRecord, list[ExperimentPoint]]:
        record = await self._get(experiment_id)
        return record, await self._db(self.store.points, experiment_id)

    # -- outcomes and judging -----------------------------------------------------------------------

    async def add_outcome(self, outcome: ModelOutcome, event_id: str) -> ExperimentRecord | None:
        """Add one outcome to its arm of the model's running experiment (once per event id) and judge; None
        when no running experiment has that arm or the outcome does not bear on its metric."""
        model = outcome.model
        running = self._running.get(model)
        version = int(outcome.version) if outcome.version.isdigit() else None
        if running is None or version not in running.versions:
            return None
        added = outcome_figures(outcome, running.metric)
        if added is None or version is None:
            return None
        async with self.lock(running.id):
            record = await self._db(
                self.store.add_outcomes, running.id, version, added.n, added.total, added.total_sq, event_id
            )
            if record is None:
                return None
            self._running[model] = record
            await self._judge(record)
        return record

    async def _judge(self, record: ExperimentRecord) -> None:
        """Judge the figures so far (the caller holds the experiment's lock); conclude on a decision."""
        control, *challengers = (_arm(record, v) for v in record.versions)
        verdict = sequential_verdict(
            control, challengers, design_of(record.metric, record.mde, record.alpha, record.max_samples_per_arm)
        )
        samples = _samples(record)
        decided = verdict.status != "running"
        if decided or samples >= self._last_point.get(record.id, 0) * POINT_GROWTH + 1:
            self._last_point[record.id] = samples
            await self._db(self.store.add_point, _point(record, verdict.p_value))
        if decided:
            await self._conclude(record, verdict)

    async def _conclude(self, record: ExperimentRecord, verdict: Verdict) -> None:
        winner = int(verdict.winner) if verdict.status == "winner" and verdict.winner is not None else None
        low, high = verdict.interval
        evidence = (
            f"{record.metric} effect {verdict.effect:+.4f} (interval {low:+.4f} to {high:+.4f}), "
            f"p = {verdict.p_value:.4g}, samples {verdict.samples}"
        )
        if winner is not None:
            reason = f"experiment {record.id}: version {winner} wins on {evidence}"
        else:
            reason = f"experiment {record.id}: no difference on {evidence}; no traffic moved"
        record.status, record.ended_at, record.winner, record.reason = (
            ExperimentStatus.concluded,
            utcnow(),
            winner,
            shorten(f"{reason}. {verdict.reason}"),
        )
        bounds = [bound if math.isfinite(bound) else None for bound in (low, high)]  # JSON has no infinity
        record.verdict = _finite({**asdict(verdict), "interval": bounds})
        if winner is not None:
            record.shares = {str(v): 1.0 if v == winner else 0.0 for v in record.versions}
        # Traffic and alias first, the event next, the record last: a failure or a crash on the way leaves
        # the experiment running, and the next outcome (or a redelivery of this one) concludes it again;
        # each step is idempotent (the event's id is the experiment's).
        self._running.pop(record.model, None)  # the route the settle writes is the deployments' own
        try:
            if winner is not None:
                await self.controller.settle(record.model, winner, reason)
            else:
                await self._route(record.model)
        except Exception:
            self._running[record.model] = await self._db(self.store.get, record.id)
            raise
        project = await self._db(self.controller.store.project_of, record.model)
        payload = ModelExperimentConcluded(
            project=project or DEFAULT_PROJECT,
            model=record.model,
            experiment_id=record.id,
            outcome="winner" if winner is not None else "no_difference",
            winner=winner,
            control=record.versions[0],
            versions=record.versions,
            metric=cast(Metric, record.metric),
            effect=verdict.effect,
            interval=(bounds[0], bounds[1]),
            p_value=min(1.0, max(0.0, verdict.p_value)),
            samples={str(k): int(n) for k, n in verdict.samples.items()},
            traffic_moved=winner is not None,
            reason=record.reason or reason,
        )
        await self.publish(payload, f"experiment_concluded:{record.id}")
        await self._end(record)
        log.info("experiment_concluded", experiment=record.id, model=record.model, winner=winner, reason=reason)
        await self._release(record.model)

    # -- the tick: servers' figures and the bandit ---------------------------------------------------

    async def tick(self) -> None:
        """Read error-rate and p99 arms from their servers, and move bandit splits to what the outcomes say."""
        for record in list(self._running.values()):
            try:
                if record.metric in FROM_SERVERS:
                    await self._read_arms(record)
                if record.policy == "bandit":
                    await self._rebalance(record.model)
            except GalleryError as exc:
                log.warning("experiment_tick_failed", experiment=record.id, reason=exc.message)

    async def _read_servers(self, record: ExperimentRecord) -> dict[int, Scrape]:
        return {v: await self.controller.read_metrics(record.model, v) for v in record.versions}

    async def _read_arms(self, record: ExperimentRecord) -> None:
        async with self.lock(record.id):
            before = self._scrapes.get(record.id)
            if before is None or record.model not in self._running:
                return
            now = await self._read_servers(record)
            windows = {v: now[v].since(before.get(v, Scrape())).overall() for v in record.versions}
            self._scrapes[record.id] = now
            current = self._running[record.model]
            if record.metric == "error_rate":
                arms = {v: current.figures(v).plus(int(w.total), w.errors, w.errors) for v, w in windows.items()}
            else:
                totals = self._windows[record.id]
                for version, window in windows.items():
                    totals[version].add(window)
                arms = tail_figures(totals, record.versions[0])
            current.arms = {str(v): f.model_dump() for v, f in arms.items()}
            current = await self._db(self.store.save, current)
            self._running[record.model] = current
            await self._judge(current)

    async def _rebalance(self, model: str) -> None:
        record = self._running.get(model)
        if record is None:
            return
        async with self.lock(record.id):
            record = self._running.get(model)
            samples = _samples(record) if record is not None else 0
            if record is None or samples == self._shared_at.get(record.id):
                return
            arms = [_arm(record, v) for v in record.versions]
            shares = thompson(
                arms,
                KINDS[record.metric],
                floor=record.floor,
                higher_is_better=HIGHER_IS_BETTER[record.metric],
                rng=self.rng,
            )
            self._shared_at[record.id] = samples
            record.shares = {name: round(float(share), 4) for name, share in shares.items()}
            record = await self._db(self.store.save, record)
            self._running[model] = record
            await self._db(self.store.add_point, _point(record, None))  # the shares' curve
        await self._route(model)


def _arm(record: ExperimentRecord, version: int) -> ArmOutcomes:
    figures = record.figures(version)
    return ArmOutcomes(arm=str(version), n=figures.n, total=figures.total, total_sq=figures.total_sq)


def _samples(record: ExperimentRecord) -> int:
    return sum(record.figures(v).n for v in record.versions)


def _point(record: ExperimentRecord, p_value: float | None) -> ExperimentPoint:
    return ExperimentPoint(experiment_id=record.id, arms=dict(record.arms), shares=dict(record.shares), p_value=p_value)


def _finite(value: Any) -> Any:
    """`value` with every infinite or NaN float made None, as JSON (and PostgreSQL's json) can hold it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
