"""Which projects a monitor request may touch: a model's timeline, figures, drift, SLOs and alerts
belong to its project.

A model's project comes from its lifecycle events (`TimelineStore.project_of`): the gateway's
figures and samples name only the model. A caller that holds no role in the project is answered
exactly as for a model the monitor never saw; setting an SLO needs admin there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from gallery_common.auth import Caller
from gallery_common.deps import CallerDep
from gallery_common.errors import Forbidden, NotFound
from gallery_common.projects import (
    PROJECT_HEADER,
    ProjectDirectory,
    authorize_in,
    check_project_name,
    home_project,
    role_in,
    visible_projects,
)
from gallery_common.settings import Role


@dataclass(frozen=True)
class ProjectScope:
    """One request's caller and the process's project directory: the checks the routes call."""

    caller: Caller
    directory: ProjectDirectory
    header_project: str | None = None

    def check(self, project: str, needed: Role, hidden: NotFound, doing: str = "this request") -> None:
        """Raise `hidden` when the caller holds no role in `project`; Forbidden when a lower one than `needed`."""
        held = role_in(self.caller, project, self.directory)
        if held is None:
            raise hidden
        if held.rank < needed.rank:
            raise Forbidden(
                f"{doing} needs the {needed.value} role in project {project!r}; your token has {held.value} there"
            )

    def listed(self, project: str | None) -> list[str]:
        """The projects a listing shows: the one asked for (404 unless visible), else every visible one."""
        if project:
            authorize_in(self.caller, check_project_name(project), Role.reader, self.directory)
            return [project]
        return visible_projects(self.caller, self.directory)

    def home(self, requested: str | None, needed: Role = Role.writer) -> str:
        """The project a submission acts in, once the caller is known to hold `needed` there."""
        project = home_project(self.caller, requested or self.header_project)
        authorize_in(self.caller, check_project_name(project), needed, self.directory)
        return project


async def get_scope(request: Request, caller: CallerDep) -> ProjectScope:
    # async: attribute reads only, so FastAPI need not hop to its thread pool for it
    directory: ProjectDirectory = request.app.state.settings.project_directory()
    return ProjectScope(caller, directory, request.headers.get(PROJECT_HEADER) or None)


ScopeDep = Annotated[ProjectScope, Depends(get_scope)]
