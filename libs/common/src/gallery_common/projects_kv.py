"""The projects and their members in the `projects` JetStream KV bucket: one key per project.

The registry writes it (`ProjectsBucket`: create a project, grant or take back a member's role, each
against the revision it read); every service follows it (`follow_projects`) into the
`ProjectDirectory` of its settings, which `auth.identify` consults on every request. A member added
in the registry is honoured by the gateway within a watch's delivery (milliseconds), and a service
that started while NATS was away knows `default` and its credentials' project roles until the bus
comes up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import orjson
from nats.js import errors as js_errors

from .errors import Conflict, InvalidRequest, NotFound
from .projects import DEFAULT_PROJECT, ProjectDirectory, ProjectRecord, check_project_name, is_project_name
from .routes_kv import ApplyChanges, RouteChange, RoutesBucket, RoutesFollower
from .settings import Role
from .telemetry import get_logger

if TYPE_CHECKING:
    from .bus import EventBus

BUCKET = "projects"
STREAM = f"KV_{BUCKET}"
SUBJECTS = f"$KV.{BUCKET}.>"
log = get_logger(__name__)


def project_of_key(key: str) -> str | None:
    return key if is_project_name(key) else None


class ProjectsBucket(RoutesBucket):
    """The registry's side of the bucket: projects as JSON documents, written against the revision read."""

    bucket = BUCKET
    history = 10  # a project's last revisions: who was a member just before a change
    description = "Model Gallery projects and their members: one key per project"
    thing = "project"

    @staticmethod
    def key_of(name: str) -> str:
        return check_project_name(name)

    async def record(self, name: str) -> ProjectRecord | None:
        entry = await self.get(name)
        if entry is None:
            return ProjectRecord(name=DEFAULT_PROJECT) if name == DEFAULT_PROJECT else None
        return ProjectRecord.from_json(orjson.loads(entry.value))

    async def records(self) -> list[ProjectRecord]:
        keys: list[str] = []
        with contextlib.suppress(js_errors.NoKeysError):  # an empty bucket
            keys = await self.bus.with_retry(self.kv.keys, what="list projects")
        names = {key for key in keys if project_of_key(key)}
        return [record for name in sorted(names | {DEFAULT_PROJECT}) if (record := await self.record(name))]

    async def create(self, record: ProjectRecord) -> ProjectRecord:
        """Store a new project; Conflict when one of that name exists (`default` always does)."""
        if record.name == DEFAULT_PROJECT or await self.get(record.name) is not None:
            raise Conflict(f"project {record.name!r} exists")
        await self.put(record.name, orjson.dumps(record.to_json()))
        return record

    async def set_member(self, name: str, member: str, role: Role | None) -> tuple[ProjectRecord, Role | None]:
        """Give `member` `role` in project `name` (None: take its role away); returns the new record and
        the role the member held before."""
        key = self.key_of(name)

        async def attempt() -> tuple[ProjectRecord, Role | None]:
            entry, expected = await self._current(key)
            if entry is None and name != DEFAULT_PROJECT:
                raise NotFound(f"project {name!r} not found")
            current = ProjectRecord.from_json(orjson.loads(entry.value or b"{}")) if entry else ProjectRecord(name=name)
            updated = current.with_member(member, role)
            await self.kv.update(key, orjson.dumps(updated.to_json()), last=expected)
            return updated, current.members.get(member)

        # another admin's change between the read and the write: read again (RoutesBucket._settle)
        return await self._settle(attempt, f"change the members of project {name!r}")


def directory_apply(directory: ProjectDirectory) -> ApplyChanges:
    """What a follower calls with the bucket's changes: each project put into, or taken out of, `directory`."""

    async def apply(changes: Sequence[RouteChange], synced: bool) -> None:
        for change in changes:
            if change.value is None:
                directory.remove(change.model)
                continue
            try:
                directory.put(ProjectRecord.from_json(orjson.loads(change.value)))
            except (ValueError, KeyError, InvalidRequest, orjson.JSONDecodeError) as exc:
                log.warning("ignoring a project the bucket holds in a shape this version cannot read", error=str(exc))
        if synced:
            directory.synced = True

    return apply


def follow_projects(bus: EventBus, directory: ProjectDirectory) -> RoutesFollower:
    """Follow the `projects` bucket into `directory` from whenever the bus is up; `close()` it on shutdown."""
    return RoutesFollower(bus, directory_apply(directory), bucket=BUCKET, name_of=project_of_key).start()
