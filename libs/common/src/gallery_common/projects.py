"""Projects: who may see and change which models.

Every model, run, job, optimization, deployment, route, experiment and alert belongs to one project.
A model name is unique across the installation and its project is fixed when it is first
registered, so every existing path (`/v2/models/{name}`, MLflow's `name=`) still names one model;
a project is a namespace of access, not of names.

Roles come from three places, and a caller's role in a project is the highest of them:

- an installation-wide role: a static token's `token:role`, or an OIDC group mapped to `role`
  (`GALLERY_OIDC_GROUP_ROLES`). It holds in every project, so `make demo` and every client of the
  single-project days keep working;
- a credential's project roles: a static token's `token:project:role`, or a group mapped to
  `project:role`;
- the project's members (`ProjectRecord.members`), kept in the `projects` KV bucket by the registry
  and followed by every service: a member is a caller's name (`oidc:alice`, `token:ci`) or a group
  (`group:ml-team`).

`admin` alone moves protected aliases and changes policies, as before, now within a project. A
project the caller holds no role in answers exactly as a project that does not exist: 404 with the
same message, so a name cannot be probed.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .errors import Forbidden, InvalidRequest, NotFound
from .settings import Role

if TYPE_CHECKING:
    from .auth import Caller

DEFAULT_PROJECT = "default"
PROJECT_PATTERN = r"^[a-z][a-z0-9-]{0,62}$"
PROJECT_RULE = "lowercase letters, digits and '-', starting with a letter, at most 63 characters"
GROUP_PREFIX = "group:"
# the project a request creates things in, when its body does not say (the CLI's --project)
PROJECT_HEADER = "x-gallery-project"
_PROJECT_RE = re.compile(PROJECT_PATTERN)


def is_project_name(name: str) -> bool:
    return bool(_PROJECT_RE.match(name))


def check_project_name(name: str) -> str:
    if not is_project_name(name):
        raise InvalidRequest(f"project name {name!r} must be {PROJECT_RULE}")
    return name


def highest(*roles: Role | None) -> Role | None:
    """The highest of `roles` (None: no role)."""
    best: Role | None = None
    for role in roles:
        if role is not None and (best is None or role.rank > best.rank):
            best = role
    return best


@dataclass(frozen=True)
class RoleGrant:
    """One role a credential grants: installation-wide (`project` None) or in one project."""

    role: Role
    project: str | None = None

    @classmethod
    def parse(cls, text: str) -> RoleGrant:
        """`reader` (installation-wide) or `team-a:writer` (in project `team-a`)."""
        project, sep, role = text.strip().rpartition(":")
        try:
            parsed = Role(role)
        except ValueError:
            choices = ", ".join(r.value for r in Role)
            raise ValueError(f"unknown role {role!r} in {text!r}: expected one of {choices}") from None
        if sep and not project:
            raise ValueError(f"empty project name in {text!r}: expected project:role")
        if project and not is_project_name(project):
            raise ValueError(f"project name {project!r} in {text!r} must be {PROJECT_RULE}")
        return cls(role=parsed, project=project or None)


def fold_grants(grants: Iterable[RoleGrant]) -> tuple[Role | None, dict[str, Role]]:
    """The highest installation-wide role and the highest role per project among `grants`."""
    best: Role | None = None
    projects: dict[str, Role] = {}
    for grant in grants:
        if grant.project is None:
            best = highest(best, grant.role)
        else:
            projects[grant.project] = highest(projects.get(grant.project), grant.role) or grant.role
    return best, projects


@dataclass(frozen=True)
class ProjectRecord:
    """A project as the `projects` bucket holds it."""

    name: str
    description: str = ""
    members: Mapping[str, Role] = field(default_factory=lambda: MappingProxyType({}))
    created_by: str = ""
    created_at: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "members": {member: role.value for member, role in sorted(self.members.items())},
            "created_by": self.created_by,
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ProjectRecord:
        name = str(doc["name"])
        check_project_name(name)
        members = {str(member): Role(role) for member, role in dict(doc.get("members") or {}).items()}
        return cls(
            name=name,
            description=str(doc.get("description") or ""),
            members=MappingProxyType(members),
            created_by=str(doc.get("created_by") or ""),
            created_at=str(doc.get("created_at") or ""),
        )

    @classmethod
    def new(cls, name: str, description: str, created_by: str, members: Mapping[str, Role]) -> ProjectRecord:
        return cls(
            name=check_project_name(name),
            description=description,
            members=MappingProxyType(dict(members)),
            created_by=created_by,
            created_at=datetime.now(UTC).isoformat(),
        )

    def with_member(self, member: str, role: Role | None) -> ProjectRecord:
        """This record with `member` holding `role` (None: removed)."""
        members = dict(self.members)
        if role is None:
            members.pop(member, None)
        else:
            members[member] = role
        return ProjectRecord(self.name, self.description, MappingProxyType(members), self.created_by, self.created_at)


DEFAULT_RECORD = ProjectRecord(name=DEFAULT_PROJECT, description="the project every installation starts with")


class ProjectDirectory:
    """The projects this process knows, and who is a member of which (followed from the bucket).

    `default` always exists. Lookups run on every request, so the members are also kept indexed by
    member: one dictionary lookup per name and group of the caller.
    """

    def __init__(self, records: Iterable[ProjectRecord] = ()) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, ProjectRecord] = {DEFAULT_PROJECT: DEFAULT_RECORD}
        self._by_member: dict[str, dict[str, Role]] = {}
        self.synced = False  # the bucket's state has been read at least once
        for record in records:
            self.put(record)

    def put(self, record: ProjectRecord) -> None:
        with self._lock:
            self._records[record.name] = record
            self._reindex()

    def remove(self, name: str) -> None:
        with self._lock:
            if name != DEFAULT_PROJECT:
                self._records.pop(name, None)
            else:
                self._records[name] = DEFAULT_RECORD
            self._reindex()

    def _reindex(self) -> None:
        index: dict[str, dict[str, Role]] = {}
        for record in self._records.values():
            for member, role in record.members.items():
                index.setdefault(member, {})[record.name] = role
        self._by_member = index

    def exists(self, name: str) -> bool:
        return name in self._records

    def get(self, name: str) -> ProjectRecord | None:
        return self._records.get(name)

    def names(self) -> list[str]:
        return sorted(self._records)

    def memberships(self, name: str, groups: Iterable[str] = ()) -> dict[str, Role]:
        """The roles the members of every project give `name` and its `groups`, per project."""
        found: dict[str, Role] = {}
        by_member = self._by_member
        for member in (name, *(GROUP_PREFIX + group for group in groups)):
            for project, role in by_member.get(member, {}).items():
                found[project] = highest(found.get(project), role) or role
        return found


def not_found(project: str) -> NotFound:
    """The one answer for a project that does not exist and for one the caller holds no role in."""
    return NotFound(f"project {project!r} not found")


def role_in(caller: Caller, project: str, directory: ProjectDirectory) -> Role | None:
    """The caller's role in `project`; None when the project does not exist or the caller has none there."""
    if not directory.exists(project):
        return None
    return highest(caller.role, caller.projects.get(project))


def authorize_in(caller: Caller, project: str, needed: Role, directory: ProjectDirectory) -> Role:
    """Check that `caller` holds `needed` in `project`; returns the role it holds.

    NotFound (the same as for a project that does not exist) when it holds no role there at all;
    Forbidden when it holds a lower one.
    """
    held = role_in(caller, project, directory)
    if held is None:
        raise not_found(project)
    if held.rank < needed.rank:
        raise Forbidden(
            f"this request needs the {needed.value} role in project {project!r}; your token has {held.value} there"
        )
    return held


def visible_projects(caller: Caller, directory: ProjectDirectory, needed: Role = Role.reader) -> list[str]:
    """The projects where `caller` holds `needed` or more (what a listing shows), sorted."""
    return [
        name
        for name in directory.names()
        if (held := role_in(caller, name, directory)) is not None and held.rank >= needed.rank
    ]


def home_project(caller: Caller, requested: str | None) -> str:
    """The project a request that names none acts in: `requested` (a body field or the
    `X-Gallery-Project` header) when given; else the caller's one project when it holds roles in
    exactly one and none installation-wide; else `default`. Whether the caller may act there is
    `authorize_in`'s to say."""
    if requested:
        return requested
    if caller.role is None and len(caller.projects) == 1:
        return next(iter(caller.projects))
    return DEFAULT_PROJECT
