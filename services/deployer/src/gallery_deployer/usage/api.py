"""`GET /api/v1/usage`: requests, rows and compute seconds per period, model, version and caller.

`since` and `until` take an ISO 8601 time (UTC when it names no zone) or a span back from now (`30m`,
`24h`, `7d`); periods are UTC hours or days. JSON by default; `format=csv` gives one line per row.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel

from gallery_common.auth import requires
from gallery_common.deps import get_resources
from gallery_common.errors import InvalidRequest, Unavailable
from gallery_common.project_scope import ScopeDep
from gallery_common.projects import DEFAULT_PROJECT
from gallery_common.settings import Role

from ..deployer.records import DeploymentStore
from .records import Period, UsageLine, UsageStore

router = APIRouter(prefix="/api/v1", tags=["usage"], dependencies=[requires(Role.reader)])
SPAN = re.compile(r"^(?P<count>\d+)(?P<unit>[smhdw])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
CSV_COLUMNS = ("period_start", "model", "version", "caller", "requests", "rows", "compute_seconds")


def parse_moment(text: str, now: datetime, name: str) -> datetime:
    """`text` as a UTC time: ISO 8601, or a span back from `now` such as `24h`; InvalidRequest says why not."""
    span = SPAN.match(text.strip())
    if span is not None:
        return now - timedelta(**{UNITS[span["unit"]]: int(span["count"])})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidRequest(
            f"{name}={text!r} is neither an ISO 8601 time (2026-12-06T10:00:00Z) nor a span back from now "
            "(a number and s, m, h, d or w: 24h)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class UsageTotals(BaseModel):
    requests: int
    rows: int
    compute_seconds: float


class UsageReport(BaseModel):
    """Usage from `since` up to `until`, per period, model, version and caller, and its totals."""

    since: datetime
    until: datetime
    period: Period
    rows: list[UsageLine]
    totals: UsageTotals


def get_usage_store(request: Request) -> UsageStore:
    engine = get_resources(request).engine
    if engine is None:
        raise Unavailable("the deployer has no database")
    return UsageStore(engine)


def _report(since: datetime, until: datetime, period: Period, lines: list[UsageLine]) -> UsageReport:
    totals = UsageTotals(
        requests=sum(r.requests for r in lines),
        rows=sum(r.rows for r in lines),
        compute_seconds=round(sum(r.compute_seconds for r in lines), 6),
    )
    return UsageReport(since=since, until=until, period=period, rows=lines, totals=totals)


def _csv(report: UsageReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in report.rows:
        writer.writerow([row.period_start.isoformat(), *(getattr(row, c) for c in CSV_COLUMNS[1:])])
    return out.getvalue()


def _in_projects(deployments: DeploymentStore, lines: list[UsageLine], projects: set[str]) -> list[UsageLine]:
    """The lines of models in `projects` (a model's project: its deployments'; never deployed: default)."""
    project_of: dict[str, str] = {}
    for model in {line.model for line in lines}:
        project_of[model] = deployments.project_of(model) or DEFAULT_PROJECT
    return [line for line in lines if project_of[line.model] in projects]


@router.get("/usage", response_model=UsageReport)
async def usage(
    store: Annotated[UsageStore, Depends(get_usage_store)],
    scope: ScopeDep,
    since: Annotated[str, Query(description="ISO 8601 time or a span back from now (24h, 7d)")] = "24h",
    until: Annotated[str | None, Query(description="ISO 8601 time or a span back from now; default now")] = None,
    period: Annotated[str, Query(description="hour or day")] = "hour",
    model: str | None = None,
    caller: str | None = None,
    project: Annotated[str | None, Query(description="only this project's models")] = None,
    format: Annotated[str, Query(description="json or csv")] = "json",
) -> UsageReport | Response:
    """Requests, rows and compute seconds the gateways metered, per period, model, version and caller:
    of the models in the projects the caller can read (or in `project`); a model of a project it holds
    no role in is left out, as one never metered."""
    if period not in ("hour", "day"):
        raise InvalidRequest(f"period={period!r} is not one of: hour, day")
    if format not in ("json", "csv"):
        raise InvalidRequest(f"format={format!r} is not one of: json, csv")
    now = datetime.now(UTC)
    start = parse_moment(since, now, "since")
    end = parse_moment(until, now, "until") if until is not None else now
    if start >= end:
        raise InvalidRequest(f"since ({start.isoformat()}) must be before until ({end.isoformat()})")
    chosen: Literal["hour", "day"] = "day" if period == "day" else "hour"
    projects = set(scope.listed(project))
    lines = await anyio.to_thread.run_sync(store.usage, start, end, chosen, model, caller)
    lines = await anyio.to_thread.run_sync(_in_projects, DeploymentStore(store.engine), lines, projects)
    report = _report(start, end, chosen, lines)
    if format == "csv":
        return Response(_csv(report), media_type="text/csv")
    return report
