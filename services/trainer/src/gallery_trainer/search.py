"""Hyperparameter search driven by the validation gate.

A job whose spec has a `search` block starts a search: trial 0 is trained from parameters Optuna
suggests. When the registry rejects a trial's model (`model.rejected`, matched by run id) Optuna
is told the trial's metric and the next trial starts, until `budget` trials were trained; when it
validates one (`model.validated`) the search has succeeded. A trial whose training fails counts
against the budget too. Each step is one transaction guarded by the trial's state, so a
redelivered event starts nothing twice.

The Optuna study is rebuilt from the trials recorded here at every step, so a search survives a
restart of the trainer and needs no storage of Optuna's own.
"""

from __future__ import annotations

import json
import random
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from gallery_common.errors import NotFound
from gallery_common.projects import DEFAULT_PROJECT
from gallery_common.telemetry import get_logger

from .records import Job, Run, Search, SearchPublic, SearchTrial, utcnow

if TYPE_CHECKING:
    import optuna

    from .spec import JobSpec, SearchDimension, SearchSpec

log = get_logger(__name__)


_PRIMITIVE = (type(None), bool, int, float, str)


def _encoded(dimension: SearchDimension) -> bool:
    """Optuna keeps only primitive choices; others (a list of layer sizes) travel as JSON text."""
    return dimension.type == "categorical" and not all(isinstance(c, _PRIMITIVE) for c in dimension.choices or [])


def _distribution(dimension: SearchDimension) -> optuna.distributions.BaseDistribution:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if dimension.type == "categorical":
        choices = list(dimension.choices or [])
        return CategoricalDistribution([json.dumps(c) for c in choices] if _encoded(dimension) else choices)
    assert dimension.low is not None and dimension.high is not None
    if dimension.type == "int":
        return IntDistribution(int(dimension.low), int(dimension.high), log=dimension.log)
    return FloatDistribution(float(dimension.low), float(dimension.high), log=dimension.log)


def suggest(search_spec: SearchSpec, trials: list[SearchTrial], seed: int) -> dict[str, Any]:
    """The next trial's parameters, from a TPE study told every finished trial so far."""
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = search_spec.space
    distributions = {path: _distribution(dim) for path, dim in space.items()}

    def encode(params: dict[str, Any]) -> dict[str, Any]:
        return {k: json.dumps(v) if _encoded(space[k]) else v for k, v in params.items()}

    # A fresh seed per trial number: the study is rebuilt each time, and one seed would repeat itself.
    sampler = optuna.samplers.TPESampler(seed=seed + len(trials))
    study = optuna.create_study(direction=search_spec.direction, sampler=sampler)
    for trial in trials:
        if trial.state == "training" or set(trial.params) != set(distributions):
            continue
        params = encode(trial.params)
        if trial.value is not None and trial.state in ("rejected", "validated"):
            study.add_trial(create_trial(params=params, distributions=distributions, value=trial.value))
        else:
            study.add_trial(create_trial(params=params, distributions=distributions, state=TrialState.FAIL))
    asked = study.ask(distributions).params
    return {k: json.loads(v) if _encoded(space[k]) else v for k, v in asked.items()}


class SearchCoordinator:
    """Starts searches and moves them on as verdicts and failures arrive; plain Python over the database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def start(self, spec: JobSpec) -> Job:
        """Record a search for `spec` (which has a search block) and its first trial job, queued."""
        from .spec import parse_spec

        assert spec.search is not None
        search = Search(
            model=spec.name,
            project=spec.project or DEFAULT_PROJECT,
            budget=spec.search.budget,
            metric=spec.search.metric,
            direction=spec.search.direction,
            seed=random.randrange(2**31),
            base_spec=spec.model_dump(mode="json"),
        )
        with Session(self.engine) as session:
            session.add(search)
            job = self._next_trial(session, search, [], parse_spec(search.base_spec))
            session.commit()
            assert job is not None
            session.refresh(job)
            session.expunge(job)
            return job

    def get(self, search_id: str) -> SearchPublic:
        with Session(self.engine) as session:
            search = session.get(Search, search_id)
            if search is None:
                raise NotFound(f"no search {search_id!r}")
            return SearchPublic.of(search, self._trials(session, search_id))

    def on_rejected(self, run_id: str, reasons: list[str]) -> str | None:
        """A trial's model was rejected: record it and start the next trial; returns the new job id."""
        return self._verdict(run_id, "rejected", reasons)

    def on_validated(self, run_id: str) -> None:
        """A trial's model passed validation: the search has succeeded."""
        self._verdict(run_id, "validated", [])

    def on_trial_ended(self, job_id: str) -> str | None:
        """A trial job ended: if it failed, the next trial starts; if cancelled, so is the search."""
        with Session(self.engine) as session:
            job = session.get(Job, job_id)
            if job is None or job.search_id is None or job.status == "succeeded":
                return None
            trial = self._trial_of(session, job)
            if trial is None or not self._settle(session, trial, "failed", None, [job.error or job.status]):
                return None
            search = session.get(Search, job.search_id)
            assert search is not None
            new_job = None
            if job.status == "cancelled":
                self._close(search, "cancelled")
            else:
                new_job = self._advance(session, search)
            return self._commit_new_job(session, new_job)

    def _verdict(self, run_id: str, verdict: str, reasons: list[str]) -> str | None:
        with Session(self.engine) as session:
            job = session.exec(select(Job).where(Job.run_id == run_id)).first()
            if job is None or job.search_id is None:
                return None  # not a trial of ours: another trainer's, or a plain job
            trial = self._trial_of(session, job)
            search = session.get(Search, job.search_id)
            assert search is not None
            run = session.get(Run, run_id)
            value = run.metrics.get(search.metric) if run is not None else None
            if trial is None or not self._settle(session, trial, verdict, value, reasons):
                return None  # handled before: a redelivery
            new_job = None
            if verdict == "validated":
                search.winner_run_id = run_id
                self._close(search, "succeeded")
            elif search.status == "running":
                new_job = self._advance(session, search)
            return self._commit_new_job(session, new_job)

    def _commit_new_job(self, session: Session, job: Job | None) -> str | None:
        try:
            session.commit()
        except IntegrityError:
            # Another instance settled the same trial first and started the next one.
            session.rollback()
            return None
        return job.id if job is not None else None

    @staticmethod
    def _settle(session: Session, trial: SearchTrial, state: str, value: float | None, reasons: list[str]) -> bool:
        """Move a trial out of `training` exactly once; False when it had already left it."""
        moved = session.execute(
            update(SearchTrial)
            .where(col(SearchTrial.id) == trial.id, col(SearchTrial.state) == "training")
            .values(state=state, value=value, reasons=reasons)
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            return False
        session.refresh(trial)
        return True

    def _advance(self, session: Session, search: Search) -> Job | None:
        if search.status != "running":
            return None
        from .spec import parse_spec

        return self._next_trial(session, search, self._trials(session, search.id), parse_spec(search.base_spec))

    def _next_trial(self, session: Session, search: Search, trials: list[SearchTrial], base: JobSpec) -> Job | None:
        if len(trials) >= search.budget:
            self._close(search, "exhausted")
            log.info("search budget spent", search_id=search.id, trials=len(trials))
            return None
        assert base.search is not None
        params = suggest(base.search, trials, search.seed)
        spec = base.search.apply(base, params)
        number = len(trials)
        job = Job(
            model=spec.name,
            project=search.project,
            spec=spec.model_dump(mode="json"),
            epochs=spec.training.epochs,
            search_id=search.id,
            trial=number,
        )
        session.add(job)
        session.add(SearchTrial(search_id=search.id, number=number, job_id=job.id, params=params))
        session.add(search)
        log.info("search trial queued", search_id=search.id, trial=number, job_id=job.id, params=params)
        return job

    @staticmethod
    def _close(search: Search, status: str) -> None:
        search.status = status
        search.finished_at = utcnow()

    @staticmethod
    def _trials(session: Session, search_id: str) -> list[SearchTrial]:
        query = select(SearchTrial).where(SearchTrial.search_id == search_id).order_by(col(SearchTrial.number))
        return list(session.exec(query).all())

    @staticmethod
    def _trial_of(session: Session, job: Job) -> SearchTrial | None:
        query = select(SearchTrial).where(SearchTrial.search_id == job.search_id, SearchTrial.number == job.trial)
        return session.exec(query).first()
