"""Projects and their members through the registry: `/api/v1/projects`.

The registry is the one writer of the `projects` KV bucket (`gallery_common.projects_kv`); every
service follows it into its `ProjectDirectory`. After a write the registry puts the new record into
its own directory at once, so its next request already honours the change instead of waiting for
the watch to deliver it.

- `GET /projects`: the projects the caller holds a role in, each with the caller's role there, and
  the members where the caller is an admin of the project;
- `POST /projects`: a new project (an installation-wide admin only; 409 if the name exists);
- `GET /projects/{name}`: one project (404 `project 'x' not found` when it is not visible, the same
  as for a project that does not exist);
- `PUT` / `DELETE /projects/{name}/members/{principal}`: grant a member a role, or take it away (an
  admin of that project); a group may be a path (`group:/ml/team-a`), its `/` sent as is or as `%2F`.

A member is a caller's name as the services know it: `oidc:<sub>` (an OIDC user), `group:<name>`
(everyone in an OIDC group) or `token-<hash8>` (a static token with project grants). Every change
is recorded in the project's audit chain (`project.created`, `project.member_granted`,
`project.member_revoked`), with the role before and after.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, status
from pydantic import BaseModel, ConfigDict, Field

from gallery_common.audit import AuditAction
from gallery_common.auth import Caller, requires
from gallery_common.deps import CallerDep, get_resources
from gallery_common.errors import BadRequest, Forbidden, NotFound, Unavailable
from gallery_common.projects import (
    PROJECT_PATTERN,
    ProjectDirectory,
    ProjectRecord,
    authorize_in,
    role_in,
    visible_projects,
)
from gallery_common.projects_kv import ProjectsBucket
from gallery_common.settings import Role

from .audit_api import AuditRecorder, AuditRecorderDep
from .deps import RegistryCore

router = APIRouter(prefix="/api/v1", tags=["projects"])

PRINCIPAL_RULE = "oidc:<subject>, group:<name> or token-<8 hex digits> (a static token's caller name)"
# a group may be a path (Keycloak's full group paths: `group:/ml/team-a`); a subject never holds '/'
_PRINCIPAL = re.compile(r"^(?:oidc:[^\s/]{1,256}|group:[^\s]{1,256}|token-[0-9a-f]{8})$")
ProjectName = Annotated[str, Path(pattern=PROJECT_PATTERN)]


def check_principal(principal: str) -> str:
    """`principal`, when it has the shape of a member; BadRequest (400) naming the shapes otherwise."""
    if not _PRINCIPAL.match(principal):
        raise BadRequest(f"member {principal!r} must be {PRINCIPAL_RULE}")
    return principal


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=PROJECT_PATTERN, description="lowercase letters, digits and '-', starting with a letter")
    description: str = Field(default="", max_length=2000)
    members: dict[str, Role] = Field(default_factory=dict, description="principal -> role")


class MemberRole(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role


class ProjectPublic(BaseModel):
    name: str
    description: str
    created_by: str
    created_at: str
    your_role: Role | None = Field(description="the caller's role in the project (null: none any more)")
    members: dict[str, Role] | None = Field(description="principal -> role; shown to the project's admins only")


def public(record: ProjectRecord, caller: Caller, directory: ProjectDirectory) -> ProjectPublic:
    held = role_in(caller, record.name, directory)
    return ProjectPublic(
        name=record.name,
        description=record.description,
        created_by=record.created_by,
        created_at=record.created_at,
        your_role=held,
        members=dict(sorted(record.members.items())) if held is not None and held.rank >= Role.admin.rank else None,
    )


def _directory(request: Request) -> ProjectDirectory:
    return request.app.state.settings.project_directory()  # type: ignore[no-any-return]


def _bucket(request: Request) -> ProjectsBucket:
    bucket = get_resources(request).core_as(RegistryCore).projects
    if bucket is None:
        raise Unavailable("projects are kept on the event bus, and this registry runs without one")
    return bucket


DirectoryDep = Annotated[ProjectDirectory, Depends(_directory)]
BucketDep = Annotated[ProjectsBucket, Depends(_bucket)]


@router.get("/projects", summary="The projects you hold a role in")
async def list_projects(caller: CallerDep, directory: DirectoryDep) -> list[ProjectPublic]:
    """Each visible project with your role there; its members where you are an admin of it."""
    return [
        public(record, caller, directory)
        for name in visible_projects(caller, directory)
        if (record := directory.get(name)) is not None
    ]


@router.post(
    "/projects",
    status_code=status.HTTP_201_CREATED,
    summary="Create a project",
    dependencies=[requires(Role.admin)],
)
async def create_project(
    data: ProjectCreate, caller: CallerDep, directory: DirectoryDep, bucket: BucketDep, audit: AuditRecorderDep
) -> ProjectPublic:
    """An installation-wide admin only; 409 if a project of that name exists (`default` always does)."""
    if not caller.can(Role.admin):
        raise Forbidden(
            f"creating a project needs the installation-wide admin role; your token has {caller.describe()}"
        )
    members = {check_principal(principal): role for principal, role in data.members.items()}
    record = await bucket.create(ProjectRecord.new(data.name, data.description, caller.name, members))
    directory.put(record)  # this registry's next request sees it without waiting for the watch
    await audit.record_here(
        AuditAction.project_created,
        f"project:{record.name}",
        before=None,
        after={"project": record.name, "members": {m: r.value for m, r in sorted(record.members.items())}},
        reason=f"project created: {record.description}" if record.description else "project created",
        project=record.name,
    )
    return public(record, caller, directory)


@router.get("/projects/{name}", summary="A project")
async def get_project(name: ProjectName, caller: CallerDep, directory: DirectoryDep) -> ProjectPublic:
    """404 `project 'x' not found` both for a project that does not exist and one you hold no role in."""
    authorize_in(caller, name, Role.reader, directory)
    record = directory.get(name)
    if record is None:
        raise NotFound(f"project {name!r} not found")
    return public(record, caller, directory)


async def _set_member(
    name: str,
    principal: str,
    role: Role | None,
    caller: Caller,
    directory: ProjectDirectory,
    bucket: ProjectsBucket,
    audit: AuditRecorder,
) -> ProjectRecord:
    authorize_in(caller, name, Role.admin, directory)
    check_principal(principal)
    record, before = await bucket.set_member(name, principal, role)
    directory.put(record)  # the member's next request to this registry holds the new role
    if before != role:
        await audit.record_here(
            AuditAction.member_granted if role is not None else AuditAction.member_revoked,
            f"project:{name}/member:{principal}",
            before={"member": principal, "role": before.value if before else None},
            after={"member": principal, "role": role.value if role else None},
            reason=f"{principal} made {role.value}" if role is not None else f"{principal} removed",
            project=name,
        )
    return record


@router.put(
    "/projects/{name}/members/{principal:path}", summary="Give a member a role", dependencies=[requires(Role.admin)]
)
async def grant_member(
    name: ProjectName,
    principal: str,
    data: MemberRole,
    caller: CallerDep,
    directory: DirectoryDep,
    bucket: BucketDep,
    audit: AuditRecorderDep,
) -> ProjectPublic:
    """An admin of the project: `principal` holds `role` there from the next request on."""
    record = await _set_member(name, principal, data.role, caller, directory, bucket, audit)
    return public(record, caller, directory)


@router.delete(
    "/projects/{name}/members/{principal:path}",
    summary="Take a member's role away",
    dependencies=[requires(Role.admin)],
)
async def revoke_member(
    name: ProjectName,
    principal: str,
    caller: CallerDep,
    directory: DirectoryDep,
    bucket: BucketDep,
    audit: AuditRecorderDep,
) -> ProjectPublic:
    """An admin of the project: `principal` is no longer a member (its credentials' own roles stay)."""
    record = await _set_member(name, principal, None, caller, directory, bucket, audit)
    return public(record, caller, directory)
