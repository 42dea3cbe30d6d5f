"""The gateways' routes as an operator sets them: written to the routes bucket, so every replica follows.

The deployer writes a model's route itself whenever its deployments change; a route set here lasts
until the next such change. Admin only, reads included: a route names internal backends and the URL
the gateway wakes a model with.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response
from pydantic import BaseModel, Field

from gallery_common.auth import requires
from gallery_common.errors import NotFound
from gallery_common.routes_kv import BUCKET
from gallery_common.settings import Role

from ..gateway.routes import ModelRoute, check_model_name
from .api import ControllerDep

router = APIRouter(prefix="/api/v1", tags=["routes"], dependencies=[requires(Role.admin)])


class RouteRevision(BaseModel):
    """A model's route and the revision of the routes bucket that holds it."""

    model: str
    bucket: str = BUCKET
    revision: int = Field(description="compare with a gateway's GET /admin/routing to see whether it has it")
    route: ModelRoute


@router.get("/routes/{model}", summary="A model's route as every gateway replica follows it")
async def get_route(model: str, controller: ControllerDep) -> RouteRevision:
    check_model_name(model)
    found = await controller.routes.get(model)
    if found is None:
        raise NotFound(f"model {model!r} has no route")
    route, revision = found
    return RouteRevision(model=model, revision=revision, route=route)


@router.put("/routes/{model}", summary="Set a model's route on every gateway replica")
async def put_route(model: str, route: Annotated[ModelRoute, Body()], controller: ControllerDep) -> RouteRevision:
    """Stored in the routes bucket before this answers; each replica applies it as it sees it."""
    check_model_name(model)
    async with controller.lock(model):
        revision = await controller.routes.put(model, route)
    return RouteRevision(model=model, revision=revision, route=route)


@router.delete("/routes/{model}", status_code=204, summary="Remove a model's route from every gateway replica")
async def delete_route(model: str, controller: ControllerDep) -> Response:
    check_model_name(model)
    async with controller.lock(model):
        deleted = await controller.routes.delete(model)
    if not deleted:
        raise NotFound(f"model {model!r} has no route")
    return Response(status_code=204)
