"""Which models and projects a registry request may touch: the project check of every route.

A model belongs to one project (fixed when it is created). A request that touches one model needs
the route's role in that project; a caller that holds no role there at all is answered exactly as
for a model that does not exist (`model 'x' not found`), so model names cannot be probed project
by project. A lower role is a 403 naming the role and the project. A request that names a project
(`?project=`, a body's `project`, the `X-Gallery-Project` header of a create) it cannot see gets
`project 'x' not found`, the same answer as for a project that does not exist.

The checks read the per-process `ProjectDirectory` (followed from the `projects` KV bucket) and the
caller `AccessMiddleware` identified; `ProjectAccess.model` costs one indexed query (the model's
project) and dictionary lookups.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Protocol, TypeVar

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

from .deps import RegistryStoreDep
from .store import RegistryStore


class OfProject(Protocol):
    """A model or version as the store answers it: it says its project."""

    @property
    def project(self) -> str: ...


R = TypeVar("R", bound=OfProject)


@dataclass(frozen=True)
class ProjectAccess:
    """One request's caller, the process's project directory and the store: the checks routes call."""

    caller: Caller
    directory: ProjectDirectory
    store: RegistryStore
    header_project: str | None = None  # the X-Gallery-Project header, where a create acts

    def model(self, name: str, needed: Role, doing: str = "this request") -> str:
        """The project of model `name`, once the caller is known to hold `needed` there.

        NotFound `model 'x' not found` both for a missing model and for one in a project the caller
        holds no role in; Forbidden, saying what `doing` needs, when it holds a lower role there.
        """
        project = self.store.model_project(name)
        self.check(name, project, needed, doing)
        return project

    def check(self, name: str, project: str, needed: Role, doing: str = "this request") -> None:
        """`model`'s check for model `name` of `project`, where the caller already knows the project."""
        held = role_in(self.caller, project, self.directory)
        if held is None:
            raise NotFound(f"model {name!r} not found")
        if held.rank < needed.rank:
            raise Forbidden(
                f"{doing} needs the {needed.value} role in project {project!r}; your token has {held.value} there"
            )

    def read(self, name: str, fetch: Callable[[], R]) -> R:
        """What `fetch` reads of model `name` (a model or version, which says its project), when the
        caller may read that project: the hot reads cost no query more than the read itself.

        A NotFound of the read (no such version or alias) is answered as for a missing model when the
        model itself is hidden, so a hidden model's versions cannot be probed either.
        """
        try:
            found = fetch()
        except NotFound:
            self.model(name, Role.reader)
            raise
        self.check(name, found.project, Role.reader)
        return found

    def project(self, project: str, needed: Role) -> str:
        """`project`, once the caller is known to hold `needed` there (NotFound when it cannot see it)."""
        authorize_in(self.caller, check_project_name(project), needed, self.directory)
        return project

    def listed(self, project: str | None) -> list[str]:
        """The projects a listing shows: the one asked for (404 unless visible), else every visible one."""
        if project:
            return [self.project(project, Role.reader)]
        return visible_projects(self.caller, self.directory)

    def home(self, requested: str | None, needed: Role = Role.writer) -> str:
        """The project a create acts in (the body's `project`, else the header, else the caller's home),
        once the caller is known to hold `needed` there."""
        return self.project(home_project(self.caller, requested or self.header_project), needed)


async def get_project_access(request: Request, caller: CallerDep, store: RegistryStoreDep) -> ProjectAccess:
    # async: attribute reads only, so FastAPI need not hop to its thread pool for it
    directory: ProjectDirectory = request.app.state.settings.project_directory()
    return ProjectAccess(caller, directory, store, request.headers.get(PROJECT_HEADER) or None)


ProjectAccessDep = Annotated[ProjectAccess, Depends(get_project_access)]
