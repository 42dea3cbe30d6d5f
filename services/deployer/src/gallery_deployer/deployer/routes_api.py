"""The gateways' routes as an operator sets them: written to the routes bucket, so every replica follows.

The deployer writes a model's route itself whenever its deployments change; a route set here lasts
until the next such change. Admin only, reads included: a route names internal backends and the URL
the gateway wakes a model with.
"""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Body, Response
from pydantic import BaseModel, Field

from gallery_common.auth import Caller, requires
from gallery_common.deps import CallerDep
from gallery_common.errors import InvalidRequest, NotFound
from gallery_common.projects import ProjectDirectory, authorize_in, role_in
from gallery_common.routes_kv import BUCKET
from gallery_common.settings import Role

from ..gateway.routes import ModelRoute, check_model_name
from .api import ControllerDep, DirectoryDep
from .controller import Controller

router = APIRouter(prefix="/api/v1", tags=["routes"], dependencies=[requires(Role.admin)])


class RouteRevision(BaseModel):
    """A model's route and the revision of the routes bucket that holds it."""

    model: str
    bucket: str = BUCKET
    revision: int = Field(description="compare with a gateway's GET /admin/routing to see whether it has it")
    route: ModelRoute


def no_route(model: str) -> NotFound:
    """The answer for a model without a route, and for one in a project the caller holds no role in."""
    return NotFound(f"model {model!r} has no route")


async def _check_admin(
    controller: Controller, caller: Caller, directory: ProjectDirectory, model: str, found: ModelRoute | None
) -> str | None:
    """The model's project (its route's, else its deployments'; None when it has neither) once the caller
    is admin there: a project it holds no role in answers as a model without a route, a lower role is 403."""
    project = found.project if found is not None else await anyio.to_thread.run_sync(controller.store.project_of, model)
    if project is None:
        return None
    if role_in(caller, project, directory) is None:
        raise no_route(model)
    authorize_in(caller, project, Role.admin, directory)
    return project


@router.get("/routes/{model}", summary="A model's route as every gateway replica follows it")
async def get_route(model: str, controller: ControllerDep, caller: CallerDep, directory: DirectoryDep) -> RouteRevision:
    check_model_name(model)
    found = await controller.routes.get(model)
    await _check_admin(controller, caller, directory, model, found[0] if found else None)
    if found is None:
        raise no_route(model)
    route, revision = found
    return RouteRevision(model=model, revision=revision, route=route)


@router.put("/routes/{model}", summary="Set a model's route on every gateway replica")
async def put_route(
    model: str,
    route: Annotated[ModelRoute, Body()],
    controller: ControllerDep,
    caller: CallerDep,
    directory: DirectoryDep,
) -> RouteRevision:
    """Stored in the routes bucket before this answers; each replica applies it as it sees it. Needs admin
    in the model's project; the route's `project` must be that project (a model's project is fixed)."""
    check_model_name(model)
    found = await controller.routes.get(model)
    project = await _check_admin(controller, caller, directory, model, found[0] if found else None)
    if project is not None and route.project != project:
        raise InvalidRequest(f"project: model {model!r} is in project {project!r}; its route cannot be in another")
    authorize_in(caller, route.project, Role.admin, directory)
    async with controller.lock(model):
        revision = await controller.routes.put(model, route)
    return RouteRevision(model=model, revision=revision, route=route)


@router.delete("/routes/{model}", status_code=204, summary="Remove a model's route from every gateway replica")
async def delete_route(model: str, controller: ControllerDep, caller: CallerDep, directory: DirectoryDep) -> Response:
    check_model_name(model)
    found = await controller.routes.get(model)
    await _check_admin(controller, caller, directory, model, found[0] if found else None)
    async with controller.lock(model):
        deleted = await controller.routes.delete(model)
    if not deleted:
        raise no_route(model)
    return Response(status_code=204)
