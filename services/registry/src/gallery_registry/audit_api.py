"""The audit trail through the registry: recording the registry's changes, and reading the trail.

Every change the registry's REST and MLflow APIs make that decides what serves or what the record says
(registrations, alias moves, status changes, validation policies, deletions, descriptions, owners and
tags, model card text) is recorded with the
caller's name, the reason given and the request's trace id (`AuditRecorder`). The trail itself lives
in its own JetStream streams (`gallery_common.audit_log`); these routes read it for anyone with the
reader role: `GET /api/v1/audit` (filtered, newest first), `/api/v1/audit/export` (JSON Lines, oldest
first, for a SIEM) and `/api/v1/audit/verify` (the chain check). Each project has its own chain;
reading one needs a role in that project (`project 'x' not found` otherwise, as for a project that
does not exist). An app without a bus records nothing and answers the reads with 503.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from gallery_common.audit import DEFAULT_PROJECT, PROJECT_PATTERN, AuditAction, AuditChange, AuditRecord
from gallery_common.audit_log import AuditLog
from gallery_common.audit_trail import AuditTrail
from gallery_common.auth import Caller
from gallery_common.deps import CallerDep, get_resources
from gallery_common.errors import Unavailable
from gallery_common.projects import authorize_in
from gallery_common.settings import Role

from .deps import RegistryCore
from .schemas import ModelPublic, VersionPublic

router = APIRouter(prefix="/api/v1", tags=["audit"])

Project = Annotated[str, Query(pattern=PROJECT_PATTERN, description="the project's chain")]


@dataclass(frozen=True)
class AuditRecorder:
    """Records the changes of one request: who made it, and in which trace (from a worker thread)."""

    trail: AuditTrail | None
    caller: Caller

    def record(
        self,
        action: AuditAction,
        target: str,
        *,
        model: str | None = None,
        version: int | None = None,
        alias: str | None = None,
        before: Any = None,
        after: Any = None,
        reason: str | None = None,
        project: str = DEFAULT_PROJECT,
    ) -> None:
        """Record one change made by this request in `project`'s chain (the changed model's project),
        from a worker thread; without a bus (a test app) nothing is recorded."""
        if self.trail is None:
            return
        change = AuditChange(
            project=project,
            actor=self.caller.name,
            action=action,
            target=target,
            model=model,
            version=version,
            alias=alias,
            before=before,
            after=after,
            reason=reason,
        )
        self.trail.record_threadsafe(change)

    def record_edit(
        self,
        action: AuditAction,
        target: str,
        before: Mapping[str, Any],
        after: Mapping[str, Any],
        *,
        project: str,
        model: str,
        version: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Record what an edit changed: the fields whose value differs, before and after (nothing when none
        does: an edit that leaves everything as it was is no change)."""
        changed = sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
        if changed:
            self.record(
                action,
                target,
                model=model,
                version=version,
                before={key: before.get(key) for key in changed},
                after={key: after.get(key) for key in changed},
                reason=reason,
                project=project,
            )

    async def record_here(
        self, action: AuditAction, target: str, *, project: str, before: Any, after: Any, reason: str
    ) -> None:
        """`record` from an `async def` route, on the event loop itself."""
        if self.trail is None:
            return
        change = AuditChange(
            project=project,
            actor=self.caller.name,
            action=action,
            target=target,
            before=before,
            after=after,
            reason=reason,
        )
        await self.trail.record(change)


def metadata_of(item: ModelPublic | VersionPublic) -> dict[str, Any]:
    """What a metadata edit changes, flat: description, owner (a model's), and each tag as `tag:<key>`."""
    fields: dict[str, Any] = {"description": item.description}
    if isinstance(item, ModelPublic):
        fields["owner"] = item.owner
    fields.update({f"tag:{key}": value for key, value in item.tags.items()})
    return fields


def _trail(request: Request) -> AuditTrail | None:
    return get_resources(request).core_as(RegistryCore).audit


async def get_recorder(request: Request, caller: CallerDep) -> AuditRecorder:
    return AuditRecorder(_trail(request), caller)


async def get_audit_log(request: Request) -> AuditLog:
    trail = _trail(request)
    if trail is None:
        raise Unavailable("the audit trail needs the event bus, and this registry runs without one")
    return trail.log


async def visible_project(request: Request, caller: CallerDep, project: Project = DEFAULT_PROJECT) -> str:
    """The `?project=` whose chain a read wants, once the caller is known to hold a role there."""
    authorize_in(caller, project, Role.reader, request.app.state.settings.project_directory())
    return project


AuditRecorderDep = Annotated[AuditRecorder, Depends(get_recorder)]
AuditLogDep = Annotated[AuditLog, Depends(get_audit_log)]
VisibleProject = Annotated[str, Depends(visible_project)]


@dataclass(frozen=True)
class AuditFilter:
    """Which records a query wants; every field given must match."""

    model: str | None = None
    action: AuditAction | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, record: AuditRecord) -> bool:
        return (
            (self.model is None or record.model == self.model)
            and (self.action is None or record.action == self.action)
            and (self.since is None or record.time >= self.since)
            and (self.until is None or record.time < self.until)
        )


def _filter(
    model: Annotated[str | None, Query(max_length=256)] = None,
    action: AuditAction | None = None,
    since: Annotated[datetime | None, Query(description="ISO 8601; records at or after")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601; records before")] = None,
) -> AuditFilter:
    return AuditFilter(model=model, action=action, since=since, until=until)


FilterDep = Annotated[AuditFilter, Depends(_filter)]


@router.get("/audit", summary="Audit records", response_model=list[AuditRecord])
async def list_audit(
    audit: AuditLogDep,
    where: FilterDep,
    project: VisibleProject,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[AuditRecord]:
    """The project's records that match, newest first: who changed what, from what to what, why, when."""
    matching = [record for record in await audit.records(project) if where.matches(record)]
    return matching[::-1][:limit]


class NdjsonResponse(StreamingResponse):
    media_type = "application/x-ndjson"


@router.get(
    "/audit/export",
    summary="Audit records as JSON Lines",
    response_class=NdjsonResponse,
    responses={200: {"description": "one stored record a line", "content": {"application/x-ndjson": {}}}},
)
async def export_audit(audit: AuditLogDep, where: FilterDep, project: VisibleProject) -> StreamingResponse:
    """Every matching record of the project, oldest first, one JSON object a line, exactly as stored
    (so a SIEM can check the hashes itself)."""
    stored = await audit.stored(project)

    async def lines() -> AsyncIterator[bytes]:
        for item in stored:
            try:
                record = AuditRecord.from_document(item.document)
            except ValueError:
                continue
            if where.matches(record):
                yield json.dumps(item.document, sort_keys=True, ensure_ascii=False).encode() + b"\n"

    return NdjsonResponse(lines())


class ChainBreakPublic(BaseModel):
    seq: int | None = None
    index: int | None = None
    kind: str
    message: str


class AuditVerification(BaseModel):
    """The result of checking one project's chain; `broken` names the first place it fails."""

    project: str
    ok: bool
    records: int
    anchors: int
    first_index: int | None
    last_index: int | None
    last_hash: str | None
    broken: ChainBreakPublic | None = None


@router.get("/audit/verify", summary="Check a project's audit chain")
async def verify_audit(audit: AuditLogDep, project: VisibleProject) -> AuditVerification:
    """Whether every record is unedited, none is missing and they are in order, and if not, the first
    place where it breaks. `gallery audit verify` does the same check reading the stream itself."""
    return AuditVerification.model_validate((await audit.verify(project)).as_dict())
