"""The usage store: what the gateways' `model.usage` reports add up to, per minute, model, version and caller.

Blocking SQL: call these from worker threads. A report is applied once: its event id is recorded in the
same transaction as its additions, so a redelivered or resent report changes nothing. Additions are
`UPDATE ... SET n = n + :delta`, so deployer replicas applying reports at once do not lose each other's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import BigInteger, Column, DateTime, Float, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, select

from gallery_common.db import as_utc, utcnow
from gallery_common.events import ModelUsage

Period = Literal["hour", "day"]
APPLY_ATTEMPTS = 3


class UsageMinute(SQLModel, table=True):
    """What one caller's requests to one model version cost within one UTC minute."""

    __tablename__ = "deployer_usage"

    minute: datetime = Field(sa_column=Column(DateTime(timezone=True), primary_key=True))
    model: str = Field(primary_key=True)
    version: str = Field(primary_key=True)
    caller: str = Field(primary_key=True)
    requests: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    rows: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    compute_seconds: float = Field(default=0.0, sa_column=Column(Float, nullable=False))


class AppliedUsageReport(SQLModel, table=True):
    """A `model.usage` event already added to the totals."""

    __tablename__ = "deployer_usage_report"

    event_id: str = Field(primary_key=True)
    applied_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))


class UsageLine(BaseModel):
    """Usage of one model version by one caller within one period."""

    period_start: datetime
    model: str
    version: str
    caller: str
    requests: int
    rows: int
    compute_seconds: float


def period_start(moment: datetime, period: Period) -> datetime:
    """The start of the UTC hour or day holding `moment`."""
    moment = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if period == "day" else moment


def _stored(moment: datetime) -> datetime:
    # in UTC and zone-aware: PostgreSQL keeps the instant whatever its session's time zone, and SQLite, which
    # keeps no zone, keeps the UTC wall time
    return moment.astimezone(UTC)


def _stored_minute(moment: datetime) -> datetime:
    return _stored(moment).replace(second=0, microsecond=0)


class UsageStore:
    """Applies usage reports and reads usage per period."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def apply(self, event_id: str, report: ModelUsage) -> bool:
        """Add `report` to the totals unless it was added before; True when it was added now."""
        for _ in range(APPLY_ATTEMPTS - 1):
            try:
                return self._apply_once(event_id, report)
            except IntegrityError:
                continue  # another replica added the same minute's row (or this report) first: add to it now
        return self._apply_once(event_id, report)

    def _apply_once(self, event_id: str, report: ModelUsage) -> bool:
        minute = _stored_minute(report.minute)
        with Session(self.engine) as session:
            if session.get(AppliedUsageReport, event_id) is not None:
                return False
            session.add(AppliedUsageReport(event_id=event_id))
            table = UsageMinute.__table__  # type: ignore[attr-defined]
            for tally in report.tallies:
                added = session.connection().execute(
                    update(table)
                    .where(
                        table.c.minute == minute,
                        table.c.model == report.model,
                        table.c.version == tally.version,
                        table.c.caller == tally.caller,
                    )
                    .values(
                        requests=table.c.requests + tally.requests,
                        rows=table.c.rows + tally.rows,
                        compute_seconds=table.c.compute_seconds + tally.compute_seconds,
                    )
                )
                if added.rowcount == 0:
                    session.add(
                        UsageMinute(
                            minute=minute,
                            model=report.model,
                            version=tally.version,
                            caller=tally.caller,
                            requests=tally.requests,
                            rows=tally.rows,
                            compute_seconds=tally.compute_seconds,
                        )
                    )
                    session.flush()
            session.commit()
        return True

    def usage(
        self,
        since: datetime,
        until: datetime,
        period: Period,
        model: str | None = None,
        caller: str | None = None,
    ) -> list[UsageLine]:
        """Usage of the minutes from the one holding `since` to the one holding `until`, summed per period,
        model, version and caller; oldest first."""
        query = select(UsageMinute).where(
            UsageMinute.minute >= _stored_minute(since),  # type: ignore[operator]
            UsageMinute.minute < _stored(until),  # type: ignore[operator]
        )
        if model is not None:
            query = query.where(UsageMinute.model == model)
        if caller is not None:
            query = query.where(UsageMinute.caller == caller)
        with Session(self.engine) as session:
            minutes: Sequence[UsageMinute] = list(session.exec(query))
            summed: dict[tuple[datetime, str, str, str], list[float]] = {}
            for row in minutes:
                stored = as_utc(row.minute)
                assert stored is not None
                key = (period_start(stored, period), row.model, row.version, row.caller)
                tally = summed.setdefault(key, [0, 0, 0.0])
                tally[0] += row.requests
                tally[1] += row.rows
                tally[2] += row.compute_seconds
        return [
            UsageLine(
                period_start=start,
                model=model_,
                version=version,
                caller=caller_,
                requests=int(t[0]),
                rows=int(t[1]),
                compute_seconds=round(t[2], 6),
            )
            for (start, model_, version, caller_), t in sorted(summed.items())
        ]
