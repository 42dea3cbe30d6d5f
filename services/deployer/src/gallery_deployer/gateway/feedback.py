"""Feedback on answers: `POST /v2/models/{model}/feedback` joins a label (a classifier's answer), a true value (a
regressor's) or a reward to the answer it is about.

Each piece names a request id (the `x-gallery-request-id` of the answer). The join reads the answer's
record from the outcome store (`outcomes.py`), checks the feedback against it, marks the record (once:
a second feedback is a conflict, on whichever replica it arrives) and publishes `model.outcome` with the
version that answered; the `outcome*` counters of `metrics.py` add it up per version. A batch
(`{"outcomes": [...]}`) is checked whole before anything is recorded: unknown ids, then malformed
pieces, then repeated ones, each answer naming the ids at fault.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gallery_common.bus import EventBus
from gallery_common.contracts.request_ids import REQUEST_ID_PATTERN
from gallery_common.errors import Conflict, InvalidRequest, NotFound, Unavailable
from gallery_common.events import ModelOutcome
from gallery_common.projects import DEFAULT_PROJECT
from gallery_common.telemetry import get_logger

from . import metrics
from .metrics import bound
from .outcomes import AnswerRecord, FeedbackMark, OutcomeRecorder, OutcomeStore

log = get_logger(__name__)

MAX_OUTCOMES = 1000  # pieces in one batch
SETTLE_S = 2.0  # how long a join waits for an answer this replica has yet to store
Label = Annotated[int, Field(ge=0)]


Value = Annotated[float, Field(allow_inf_nan=False)]


class Feedback(BaseModel):
    """Feedback on one answer: its `label` (a class per row; an int for a one-row answer), a regressor's true
    `value` (one per row, or a list per row for several outputs; a number for a one-row, one-output answer)
    or a `reward`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    request_id: str = Field(pattern=REQUEST_ID_PATTERN, description="the answer's x-gallery-request-id")
    label: Label | list[Label] | None = Field(default=None, description="the true class, one per row of the answer")
    value: Value | list[Value] | list[list[Value]] | None = Field(
        default=None, description="a regressor's true value(s), one per row of the answer"
    )
    reward: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_kind(self) -> Feedback:
        if sum(given is not None for given in (self.label, self.value, self.reward)) != 1:
            raise ValueError("give one of a label, a value or a reward")
        if isinstance(self.label, list) and not self.label:
            raise ValueError("label: an empty list labels no row")
        if isinstance(self.value, list) and not self.value:
            raise ValueError("value: an empty list gives no row a value")
        return self

    @property
    def kind(self) -> Literal["label", "value", "reward"]:
        return "label" if self.label is not None else "value" if self.value is not None else "reward"


class FeedbackBatch(BaseModel):
    """Feedback on several answers at once."""

    model_config = ConfigDict(extra="forbid", strict=True)

    outcomes: list[Feedback] = Field(min_length=1, max_length=MAX_OUTCOMES)

    @model_validator(mode="after")
    def _one_each(self) -> FeedbackBatch:
        ids = [piece.request_id for piece in self.outcomes]
        repeated = sorted({rid for rid in ids if ids.count(rid) > 1})
        if repeated:
            raise ValueError(f"request ids given more than once: {', '.join(repeated)}")
        return self


class FeedbackAnswer(BaseModel):
    """What was recorded: one `model.outcome` per piece of feedback."""

    recorded: list[ModelOutcome]


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:10]:
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg']}" if where else str(err["msg"]))
    return "invalid feedback: " + "; ".join(parts)


def parse_feedback(body: bytes) -> list[Feedback]:
    """The pieces of feedback a body holds; InvalidRequest (422) saying what is wrong with it."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"invalid feedback: the body is not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise InvalidRequest(
            'invalid feedback: send {"request_id", "label" | "value" | "reward"} or {"outcomes": [...]}'
        )
    try:
        if "outcomes" in document:
            return FeedbackBatch.model_validate(document).outcomes
        return [Feedback.model_validate(document)]
    except ValidationError as exc:
        raise InvalidRequest(_describe(exc)) from None


def joined_outcome(
    model: str, piece: Feedback, record: AnswerRecord, given_by: str, project: str = DEFAULT_PROJECT
) -> ModelOutcome:
    """The outcome of `piece` against the answer it is about (in the model's `project`); ValueError when
    they do not fit."""
    common: dict[str, Any] = {
        "model": model,
        "project": project,
        "version": record.version,
        "variant": record.variant,
        "request_id": piece.request_id,
        "caller": record.caller,
        "given_by": given_by,
        "answered_at": record.answered_at,
        "rows": record.rows,
    }
    if piece.reward is not None:
        return ModelOutcome(**common, kind="reward", reward=piece.reward)
    if piece.value is not None:
        return _valued(common, piece.value, record)
    assert piece.label is not None, "a piece has a label, a value or a reward"
    labels = piece.label if isinstance(piece.label, list) else [piece.label]
    if len(labels) != record.rows:
        raise ValueError(f"{len(labels)} label(s) for an answer of {record.rows} row(s)")
    if record.classes is None:
        raise ValueError(
            "the answer holds no classes to compare a label with (a regressor's predictions, or a first output "
            "that is neither per-row scores nor class ids); send a reward"
        )
    correct = [label == answered for label, answered in zip(labels, record.classes, strict=True)]
    return ModelOutcome(**common, kind="label", label=labels, correct=correct, correct_rows=sum(correct))


def _valued(
    common: dict[str, Any], value: float | list[float] | list[list[float]], record: AnswerRecord
) -> ModelOutcome:
    """A regressor's answer joined to its true values: the squared error of each row."""
    if record.predictions is None:
        raise ValueError(
            "the answer holds no predictions to compare a value with (a classifier's answer takes a label); "
            "send a reward"
        )
    predicted = np.asarray(record.predictions, dtype=np.float64)
    given = value if isinstance(value, list) else [value]
    rows = [row if isinstance(row, list) else [row] for row in given]
    if len(rows) != record.rows or any(len(row) != predicted.shape[1] for row in rows):
        raise ValueError(
            f"{len(rows)} value(s) for an answer of {record.rows} row(s) of {predicted.shape[1]} prediction(s)"
        )
    truth = np.asarray(rows, dtype=np.float64)
    squared = ((predicted - truth) ** 2).mean(axis=1)
    return ModelOutcome(**common, kind="value", value=truth.tolist(), squared_error=squared.tolist())


def count(outcome: ModelOutcome) -> None:
    """Add a joined outcome to the counters of the version and variant that answered."""
    by = (outcome.model, outcome.version, outcome.variant)
    bound(metrics.OUTCOMES, *by, outcome.kind).inc()
    if outcome.kind == "label":
        bound(metrics.OUTCOME_ROWS, *by).inc(outcome.rows)
        bound(metrics.OUTCOME_CORRECT_ROWS, *by).inc(outcome.correct_rows or 0)
    elif outcome.kind == "value":
        bound(metrics.OUTCOME_VALUE_ROWS, *by).inc(outcome.rows)
        bound(metrics.OUTCOME_SQUARED_ERROR, *by).inc(sum(outcome.squared_error or ()))
    elif outcome.reward is not None and outcome.reward > 0:
        bound(metrics.OUTCOME_REWARD_GAINED, *by).inc(outcome.reward)
    elif outcome.reward is not None and outcome.reward < 0:
        bound(metrics.OUTCOME_REWARD_LOST, *by).inc(-outcome.reward)


def _ids(ids: list[str]) -> str:
    return ", ".join(ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")


class FeedbackDesk:
    """Joins feedback to recorded answers and publishes the outcomes."""

    def __init__(self, recorder: OutcomeRecorder) -> None:
        self.recorder = recorder
        self.store: OutcomeStore = recorder.store
        self.bus: EventBus = recorder.store.bus

    async def _find(self, request_id: str) -> tuple[AnswerRecord, int] | None:
        found = await self.store.read(request_id)
        if found is None and await self.recorder.settled(request_id, SETTLE_S):
            found = await self.store.read(request_id)  # answered just now here, and stored since
        return found

    async def give(
        self, model: str, pieces: list[Feedback], given_by: str, project: str = DEFAULT_PROJECT
    ) -> list[ModelOutcome]:
        """Join and publish every piece, or none: NotFound, InvalidRequest or Conflict name the ids at fault.
        The outcomes go out in the model's `project` (its subjects)."""
        found = await asyncio.gather(*(self._find(piece.request_id) for piece in pieces))
        unknown = [p.request_id for p, f in zip(pieces, found, strict=True) if f is None]
        elsewhere = [p.request_id for p, f in zip(pieces, found, strict=True) if f is not None and f[0].model != model]
        if unknown or elsewhere:
            reasons = []
            if unknown:
                reasons.append(
                    f"unknown or expired (answers are kept {self.store.ttl_s:g} s, GALLERY_OUTCOME_TTL_S, and only "
                    f"for models whose route records outcomes): {_ids(unknown)}"
                )
            if elsewhere:
                reasons.append(f"not answers of model {model!r}: {_ids(elsewhere)}")
            raise NotFound(f"no recorded answer to join: request id(s) {'; '.join(reasons)}")
        joins: list[tuple[Feedback, AnswerRecord, int, ModelOutcome]] = []
        problems: list[str] = []
        repeated: list[str] = []
        for piece, (record, revision) in zip(pieces, (f for f in found if f is not None), strict=True):
            if record.feedback is not None:
                repeated.append(piece.request_id)
                continue
            try:
                joins.append((piece, record, revision, joined_outcome(model, piece, record, given_by, project)))
            except ValueError as exc:
                problems.append(f"{piece.request_id}: {exc}")
        if problems:
            raise InvalidRequest("invalid feedback: " + "; ".join(problems))
        if repeated:
            raise Conflict(f"feedback was given already for request id(s) {_ids(repeated)}; an answer is joined once")
        if not self.bus.is_connected:
            raise Unavailable("outcomes cannot be published now: this gateway is not connected to NATS")
        marked = await asyncio.gather(
            *(self._mark(piece, record, revision, given_by) for piece, record, revision, _ in joins)
        )
        lost = [join[0].request_id for join, revision in zip(joins, marked, strict=True) if revision is None]
        won = [(join, revision) for join, revision in zip(joins, marked, strict=True) if revision is not None]
        await self._publish(won)
        if lost:
            recorded = [join[0].request_id for join, _ in won]
            raise Conflict(
                f"feedback was given meanwhile for request id(s) {_ids(lost)}"
                + (f"; recorded: {_ids(recorded)}" if recorded else "")
            )
        return [join[3] for join, _ in won]

    async def _mark(self, piece: Feedback, record: AnswerRecord, revision: int, given_by: str) -> int | None:
        mark = FeedbackMark(kind=piece.kind, at=datetime.now(UTC), by=given_by)
        return await self.store.replace(piece.request_id, record.model_copy(update={"feedback": mark}), revision)

    async def _publish(self, won: list[tuple[tuple[Feedback, AnswerRecord, int, ModelOutcome], int]]) -> None:
        """Publish the marked outcomes; when the bus fails, unmark the ones not published and say so (503)."""
        results = await asyncio.gather(
            *(self.bus.publish(join[3], event_id=f"outcome.{join[0].request_id}") for join, _ in won),
            return_exceptions=True,
        )
        failed = []
        for (join, revision), result in zip(won, results, strict=True):
            if isinstance(result, BaseException):
                failed.append(join[0].request_id)
                await self._unmark(join[0].request_id, join[1], revision)
            else:
                count(join[3])
        if failed:
            raise Unavailable(f"outcomes not published (the bus failed), send them again: {_ids(failed)}")

    async def _unmark(self, request_id: str, record: AnswerRecord, revision: int) -> None:
        try:
            await self.store.replace(request_id, record, revision)
        except Exception as exc:  # the bus is failing: the answer stays marked, and the log says so
            log.error("feedback marked but not published", request_id=request_id, reason=repr(exc))
