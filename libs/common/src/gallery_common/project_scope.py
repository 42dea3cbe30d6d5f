"""A request's project checks, for the routes of a service whose things belong to projects.

`ScopeDep` gives a route the caller and the process's project directory. `check` answers a caller
that holds no role in a thing's project exactly as for a thing that does not exist (the route's own
`hidden` NotFound), so names and ids cannot be probed, and a lower role than needed with a 403 naming
the role and the project; `listed` is what a listing shows (`?project=`, else every visible project);
`home` is where a submission that names no project acts (`X-Gallery-Project`, else the caller's one
project, else `default`), once the caller is known to hold the role there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from .auth import Caller
from .deps import CallerDep
from .errors import Forbidden, NotFound
from .projects import (
    PROJECT_HEADER,
    ProjectDirectory,
    authorize_in,
    check_project_name,
    home_project,
    role_in,
    visible_projects,
)
from .settings import Role


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
