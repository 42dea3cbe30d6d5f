"""Online quality: the gateway's `model.outcome` events (feedback joined to the version that answered) kept
per answer, and each version's online accuracy, rmse and mean reward over a window, beside the gate's.

An outcome counts at the moment its answer was given (`answered_at`), so a label that arrives an hour
late still describes the answers of an hour ago. One row per outcome, stored once per event id, so a
redelivered event changes nothing; rows older than the retention are forgotten.

Blocking SQL: call from worker threads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Literal

from sqlalchemy import delete, exc, func
from sqlalchemy import select as select_rows
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from gallery_common.db import insert_once
from gallery_common.events import FP32_VARIANT, CloudEvent, ModelOutcome

from .records import OutcomeRecord, Slo

CHART_POINTS = 30  # buckets a window's series is cut into, at least a minute each


def outcome_row(event: CloudEvent[ModelOutcome]) -> OutcomeRecord:
    """The row one outcome is kept as: counts that add up over any window."""
    data = event.data
    answered = data.answered_at if data.answered_at.tzinfo else data.answered_at.replace(tzinfo=UTC)
    epoch = answered.timestamp()
    return OutcomeRecord(
        event_id=event.id,
        model=data.model,
        project=data.project,
        version=data.version,
        variant=data.variant,
        kind=data.kind,
        answered_s=epoch,
        answered_minute=int(epoch // 60),
        rows=data.rows,
        labelled_rows=data.rows if data.kind == "label" else 0,
        correct_rows=data.correct_rows or 0,
        valued_rows=data.rows if data.kind == "value" else 0,
        squared_error=math.fsum(data.squared_error or ()),
        rewarded=1 if data.kind == "reward" else 0,
        reward=data.reward or 0.0,
    )


@dataclass(frozen=True)
class Tally:
    """Sums of outcomes: enough for accuracy, rmse and mean reward of any set of them."""

    outcomes: int = 0
    labelled_rows: int = 0
    correct_rows: int = 0
    valued_rows: int = 0
    squared_error: float = 0.0
    rewarded: int = 0
    reward: float = 0.0

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            outcomes=self.outcomes + other.outcomes,
            labelled_rows=self.labelled_rows + other.labelled_rows,
            correct_rows=self.correct_rows + other.correct_rows,
            valued_rows=self.valued_rows + other.valued_rows,
            squared_error=self.squared_error + other.squared_error,
            rewarded=self.rewarded + other.rewarded,
            reward=self.reward + other.reward,
        )

    def online(self) -> dict[str, Any]:
        """The figures of `views.OnlineFigures`: counts, accuracy, rmse and mean reward."""
        return {
            "outcomes": self.outcomes,
            "labelled_rows": self.labelled_rows,
            "accuracy": self.accuracy,
            "valued_rows": self.valued_rows,
            "rmse": self.rmse,
            "rewarded": self.rewarded,
            "mean_reward": self.mean_reward,
        }

    @property
    def accuracy(self) -> float | None:
        return round(self.correct_rows / self.labelled_rows, 6) if self.labelled_rows else None

    @property
    def rmse(self) -> float | None:
        return round(math.sqrt(self.squared_error / self.valued_rows), 6) if self.valued_rows else None

    @property
    def mean_reward(self) -> float | None:
        return round(self.reward / self.rewarded, 6) if self.rewarded else None


_SUMS = (
    func.count(),
    func.sum(OutcomeRecord.labelled_rows),
    func.sum(OutcomeRecord.correct_rows),
    func.sum(OutcomeRecord.valued_rows),
    func.sum(OutcomeRecord.squared_error),
    func.sum(OutcomeRecord.rewarded),
    func.sum(OutcomeRecord.reward),
)


def _tally(sums: tuple[object, ...]) -> Tally:
    count, labelled, correct, valued, squared, rewarded, reward = sums
    return Tally(
        outcomes=int(count or 0),  # type: ignore[call-overload]
        labelled_rows=int(labelled or 0),  # type: ignore[call-overload]
        correct_rows=int(correct or 0),  # type: ignore[call-overload]
        valued_rows=int(valued or 0),  # type: ignore[call-overload]
        squared_error=float(squared or 0.0),  # type: ignore[arg-type]
        rewarded=int(rewarded or 0),  # type: ignore[call-overload]
        reward=float(reward or 0.0),  # type: ignore[arg-type]
    )


def measured(value: object) -> float | None:
    """A figure from a report (the gate's, the optimizer's): a number, not a flag, text or a missing one."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def bucket_minutes(window_s: float) -> int:
    """Whole minutes per chart point, so a window gives at most `CHART_POINTS` of them."""
    return max(1, math.ceil(window_s / 60 / CHART_POINTS))


class QualityStore:
    """Outcomes per answer in the database, and their sums per version and time bucket."""

    def __init__(self, engine: Engine, retention_s: float) -> None:
        self.engine = engine
        self.retention_s = retention_s

    def record(self, event: CloudEvent[ModelOutcome]) -> bool:
        """Keep one outcome; False when its event id is kept already."""
        row = outcome_row(event)
        return insert_once(self.engine, row, OutcomeRecord.event_id, row.event_id)

    def record_many(self, events: list[CloudEvent[ModelOutcome]]) -> list[bool]:
        """Keep many outcomes in one transaction; per event, False when its id is kept already (or repeats
        an earlier one in `events`). Should another writer store one of them meanwhile, each is kept on its own."""
        rows = [outcome_row(event) for event in events]
        ids = {row.event_id for row in rows}
        with Session(self.engine) as session:
            kept = set(session.exec(select(OutcomeRecord.event_id).where(col(OutcomeRecord.event_id).in_(ids))))
            fresh: list[bool] = []
            for row in rows:
                fresh.append(row.event_id not in kept)
                if fresh[-1]:
                    kept.add(row.event_id)
                    session.add(row)
            try:
                session.commit()
            except exc.IntegrityError:
                session.rollback()
                return [self.record(event) for event in events]
        return fresh

    def knows(self, model: str) -> bool:
        with Session(self.engine) as session:
            return session.exec(select(OutcomeRecord.seq).where(OutcomeRecord.model == model)).first() is not None

    def models(self, since_s: float) -> list[str]:
        """Models with an outcome answered since `since_s` (epoch seconds)."""
        query = select(OutcomeRecord.model).where(OutcomeRecord.answered_s >= since_s).distinct()
        with Session(self.engine) as session:
            return sorted(session.exec(query))

    def by_version(self, model: str, since_s: float) -> dict[str, Tally]:
        """Each version's outcomes answered since `since_s`."""
        query = (
            select_rows(OutcomeRecord.version, *_SUMS)  # type: ignore[call-overload]
            .where(OutcomeRecord.model == model, OutcomeRecord.answered_s >= since_s)
            .group_by(OutcomeRecord.version)
        )
        with Session(self.engine) as session:
            return {row[0]: _tally(tuple(row[1:])) for row in session.execute(query)}

    def by_variant(self, model: str, since_s: float) -> dict[tuple[str, str], Tally]:
        """Each (version, variant)'s outcomes answered since `since_s`: the variant is the one the route
        named for the backend that answered (a fallback's answers count for the fallback's variant)."""
        query = (
            select_rows(OutcomeRecord.version, OutcomeRecord.variant, *_SUMS)  # type: ignore[call-overload]
            .where(OutcomeRecord.model == model, OutcomeRecord.answered_s >= since_s)
            .group_by(OutcomeRecord.version, OutcomeRecord.variant)
        )
        with Session(self.engine) as session:
            return {(row[0], row[1]): _tally(tuple(row[2:])) for row in session.execute(query)}

    def buckets(self, model: str, since_s: float, minutes: int) -> list[tuple[float, str, Tally]]:
        """(bucket start in epoch seconds, version, its outcomes) per bucket of `minutes`, oldest first."""
        first = int(since_s // 60)
        bucket = (OutcomeRecord.answered_minute - first) // minutes
        query = (
            select_rows(bucket, OutcomeRecord.version, *_SUMS)  # type: ignore[call-overload]
            .where(OutcomeRecord.model == model, OutcomeRecord.answered_s >= first * 60.0)  # the index's columns
            .group_by(bucket, OutcomeRecord.version)
            .order_by(bucket, OutcomeRecord.version)
        )
        with Session(self.engine) as session:
            rows = list(session.execute(query))
        return [((first + int(row[0]) * minutes) * 60.0, row[1], _tally(tuple(row[2:]))) for row in rows]

    def forget_before(self, cutoff_s: float) -> int:
        """Drop outcomes answered before `cutoff_s`; returns how many."""
        with Session(self.engine) as session:
            result = session.exec(delete(OutcomeRecord).where(col(OutcomeRecord.answered_s) < cutoff_s))  # type: ignore[call-overload]
            session.commit()
            return int(result.rowcount or 0)


@dataclass(frozen=True)
class Reference:
    """What online figures are held to: the test accuracy or rmse of what answered, and who measured it (the
    gate, of the version's own model; the optimizer, of an optimized variant)."""

    accuracy: float | None = None
    rmse: float | None = None
    by: Literal["gate", "optimizer"] = "gate"

    @classmethod
    def of(
        cls, variant: str, gate_accuracy: float | None, gate_rmse: float | None, optimizer: dict[str, object]
    ) -> Reference:
        """The reference of `variant`'s answers: the optimizer's figures of an optimized variant when it measured
        them (`optimizer`: its metrics of the variant), else the gate's."""
        if variant not in ("", FP32_VARIANT):
            accuracy, rmse = measured(optimizer.get("accuracy")), measured(optimizer.get("rmse"))
            if accuracy is not None or rmse is not None:
                return cls(accuracy, rmse, "optimizer")
        return cls(gate_accuracy, gate_rmse, "gate")


def judge_quality(
    tally: Tally,
    slo: Slo,
    gate_accuracy: float | None,
    gate_rmse: float | None = None,
    reference: Reference | None = None,
) -> tuple[bool, str, dict[str, float | int | str | None]]:
    """(breached, reason, evidence) of one version's outcomes (or one variant's of it) over the quality window.

    A drop is measured against `reference` (by default the gate's figures). Judged only with
    `slo.quality_min_rows` labelled (or valued) rows: a handful of labels says little.
    """
    ref = reference or Reference(gate_accuracy, gate_rmse)
    whose = f"the {ref.by}'s"
    evidence: dict[str, float | int | str | None] = {
        "outcomes": tally.outcomes,
        "labelled_rows": tally.labelled_rows,
        "online_accuracy": tally.accuracy,
        "gate_accuracy": gate_accuracy,
        "valued_rows": tally.valued_rows,
        "online_rmse": tally.rmse,
        "gate_rmse": gate_rmse,
        "reference": ref.by,
        "reference_accuracy": ref.accuracy,
        "reference_rmse": ref.rmse,
        "slo_min_online_accuracy": slo.min_online_accuracy,
        "slo_max_accuracy_drop": slo.max_accuracy_drop,
        "slo_max_online_rmse": slo.max_online_rmse,
        "slo_max_rmse_ratio": slo.max_rmse_ratio,
        "window_s": slo.quality_window_s,
    }
    breaches: list[str] = []
    accuracy, rmse = tally.accuracy, tally.rmse
    if accuracy is not None and tally.labelled_rows >= slo.quality_min_rows:
        if slo.min_online_accuracy is not None and accuracy < slo.min_online_accuracy:
            breaches.append(f"online accuracy {accuracy:.1%} < SLO {slo.min_online_accuracy:.1%}")
        if slo.max_accuracy_drop is not None and ref.accuracy is not None:
            floor = ref.accuracy - slo.max_accuracy_drop
            if accuracy < floor:
                breaches.append(
                    f"online accuracy {accuracy:.1%} is {(ref.accuracy - accuracy) * 100:.1f} points below "
                    f"{whose} {ref.accuracy:.1%} (SLO: at most {slo.max_accuracy_drop * 100:g})"
                )
    if rmse is not None and tally.valued_rows >= slo.quality_min_rows:
        if slo.max_online_rmse is not None and rmse > slo.max_online_rmse:
            breaches.append(f"online rmse {rmse:.4g} > SLO {slo.max_online_rmse:g}")
        if slo.max_rmse_ratio is not None and ref.rmse and rmse > ref.rmse * slo.max_rmse_ratio:
            breaches.append(
                f"online rmse {rmse:.4g} is {rmse / ref.rmse:.2f} times {whose} {ref.rmse:.4g} "
                f"(SLO: at most {slo.max_rmse_ratio:g})"
            )
    if not breaches:
        return False, "", evidence
    rows = tally.labelled_rows + tally.valued_rows
    return True, f"{'; '.join(breaches)} over {slo.quality_window_s:g} s ({rows} rows with feedback)", evidence


def variant_breakdown(
    variants: dict[str, Tally], optimizer_metrics: dict[str, dict[str, object]]
) -> tuple[str, dict[str, dict[str, float | int | None]]]:
    """Which variant gave a breaching version's answers, for the alert: a line ("by variant: int8 82.0 % of
    600 rows (optimizer 95.8 %); fp32 96.0 % of 40 rows") and the figures per variant name, the most rows
    first. `optimizer_metrics`: what the optimizer measured of each variant (its `model.optimized` metrics)."""
    figures: dict[str, dict[str, float | int | None]] = {}
    parts: list[str] = []
    for name, tally in sorted(
        variants.items(), key=lambda item: (-(item[1].labelled_rows + item[1].valued_rows), item[0])
    ):
        metrics = optimizer_metrics.get(name, {})
        test_accuracy, test_rmse = measured(metrics.get("accuracy")), measured(metrics.get("rmse"))
        figures[name or "(unnamed)"] = {
            "labelled_rows": tally.labelled_rows,
            "online_accuracy": tally.accuracy,
            "test_accuracy": test_accuracy,
            "valued_rows": tally.valued_rows,
            "online_rmse": tally.rmse,
            "test_rmse": test_rmse,
        }
        if tally.accuracy is not None:
            optimizer = f" (optimizer {test_accuracy:.1%})" if test_accuracy is not None else ""
            parts.append(f"{name or '(unnamed)'} {tally.accuracy:.1%} of {tally.labelled_rows} rows{optimizer}")
        elif tally.rmse is not None:
            optimizer = f" (optimizer {test_rmse:.4g})" if test_rmse is not None else ""
            parts.append(f"{name or '(unnamed)'} rmse {tally.rmse:.4g} of {tally.valued_rows} rows{optimizer}")
    return (f"by variant: {'; '.join(parts)}" if parts else ""), figures
