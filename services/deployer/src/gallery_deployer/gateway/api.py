"""REST adapters: the OIP v2 API every deployed model shares, and the routing-table admin API.

Inference itself is `fastpath.InferEndpoint`, a plain ASGI route in the OIP router, not a FastAPI route.
Explanations are not a hot path: plain routes over `Gateway.explain`.
"""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Body, Request, Response
from pydantic import BaseModel, Field

from gallery_common import __version__
from gallery_common.auth import Caller, authorize, requires
from gallery_common.deps import get_resources
from gallery_common.errors import NotFound, Unavailable
from gallery_common.projects import DEFAULT_PROJECT, authorize_in, role_in
from gallery_common.routes_kv import BUCKET
from gallery_common.settings import Role

from .fastpath import INFER_ROUTES, OIP_TAG
from .feedback import Feedback, FeedbackAnswer, FeedbackBatch, FeedbackDesk, parse_feedback
from .proxy import Gateway
from .routes import ModelRoute, RouteBook, check_model_name

# An inference token may use the whole OIP API: health, metadata, readiness, infer.
oip = APIRouter(tags=[OIP_TAG], dependencies=[requires(Role.inference)])
# The routing table decides where a model's traffic, and the model-server token with it, go, and
# `wake_url` is a URL the gateway POSTs to with the deployer's token: admin only, reads included
# (the table names every internal backend).
admin = APIRouter(prefix="/admin", tags=["routing"], dependencies=[requires(Role.admin)])


def _gateway(request: Request) -> Gateway:
    return get_resources(request).core_as(Gateway)


def _book(request: Request) -> RouteBook:
    return _gateway(request).book


@oip.get("/v2/health/live")
async def live() -> dict[str, bool]:
    """The gateway process answers."""
    return {"live": True}


@oip.get("/v2/health/ready")
async def ready(request: Request) -> Response:
    """Ready once started; a model's own readiness is /v2/models/{model}/ready."""
    started = bool(getattr(request.app.state, "started", False))
    return Response(
        b'{"ready":true}' if started else b'{"ready":false}', 200 if started else 503, media_type="application/json"
    )


@oip.get("/v2")
async def server_metadata() -> dict[str, object]:
    return {"name": "modelgallery-gateway", "version": __version__, "extensions": []}


@oip.get("/v2/models/{model}")
async def model_metadata(model: str, request: Request) -> Response:
    return await _gateway(request).forward_get(model, None, request.url.path, await authorize(request))


@oip.get("/v2/models/{model}/versions/{version}")
async def model_version_metadata(model: str, version: str, request: Request) -> Response:
    return await _gateway(request).forward_get(model, version, request.url.path, await authorize(request))


@oip.get("/v2/models/{model}/ready")
async def model_ready(model: str, request: Request) -> Response:
    return await _gateway(request).forward_get(model, None, request.url.path, await authorize(request))


@oip.get("/v2/models/{model}/versions/{version}/ready")
async def model_version_ready(model: str, version: str, request: Request) -> Response:
    return await _gateway(request).forward_get(model, version, request.url.path, await authorize(request))


async def _explain(model: str, version: str | None, request: Request) -> Response:
    body = await request.body()  # within GALLERY_MAX_BODY_BYTES: AccessMiddleware counts it as it is read
    return await _gateway(request).explain(
        model, version, request.url.path, body, request.headers, request.cookies, await authorize(request)
    )


@oip.post("/v2/models/{model}/explain", summary="Explain")
async def explain(model: str, request: Request) -> Response:
    """An OIP v2 infer request plus `parameters` (`method`, `target`, `nsamples`, `seed`, `patch`),
    forwarded as bytes to the backend the traffic policy picks, with the same fallbacks as inference;
    the answer is the model server's (`gallery_common.explain.answer.ExplainAnswer`), never cached.
    A backend that asks to be retried later passes on its 503 and Retry-After."""
    return await _explain(model, None, request)


@oip.post("/v2/models/{model}/versions/{version}/explain", summary="Explain Version")
async def explain_version(model: str, version: str, request: Request) -> Response:
    """As `/v2/models/{model}/explain`, sent only to backends serving `version`."""
    return await _explain(model, version, request)


_FEEDBACK_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"oneOf": [Feedback.model_json_schema(), FeedbackBatch.model_json_schema()]}}
        },
    }
}


@oip.post(
    "/v2/models/{model}/feedback",
    status_code=202,
    summary="Feedback",
    openapi_extra=_FEEDBACK_BODY,
    responses={404: {"description": "Unknown or expired request id, or another model's"}, 409: {}, 422: {}},
)
async def feedback(model: str, request: Request) -> FeedbackAnswer:
    """The true label (one class per row of the answer) or a reward for an answer, named by its
    `x-gallery-request-id`: `{"request_id", "label" | "reward"}`, or `{"outcomes": [...]}` for up to
    1000 at once. Joined to the version that answered (for models whose route records outcomes)
    and published as `model.outcome`. 404: an id unknown, expired or of another model; 422: malformed
    (both or neither of label and reward, a label count other than the answer's rows); 409: the answer
    has its feedback already. Nothing of a batch is recorded when a piece fails."""
    pieces = parse_feedback(await request.body())
    caller = await authorize(request)
    gateway = _gateway(request)
    route = gateway.book.get(model)
    if route is not None:
        gateway.visible_route(model, caller)  # another project's model answers as one without a route
    recorder = _gateway(request).outcomes
    if recorder is None:
        raise Unavailable("this gateway runs without NATS and keeps no answers to join feedback to")
    project = route.project if route is not None else DEFAULT_PROJECT
    return FeedbackAnswer(recorded=await FeedbackDesk(recorder).give(model, pieces, caller.name, project))


oip.routes.extend(INFER_ROUTES)


def _admin_in(request: Request, caller: Caller, model: str, route: ModelRoute | None) -> ModelRoute | None:
    """`route` when the caller is admin in its project; a project it holds no role in answers as a
    model without a route (NotFound), a lower role is a 403 naming the role and the project."""
    if route is None:
        return None
    directory = request.app.state.settings.project_directory()
    if role_in(caller, route.project, directory) is None:
        raise NotFound(f"model {model!r} has no route")
    authorize_in(caller, route.project, Role.admin, directory)
    return route


@admin.get("/routes")
async def list_routes(request: Request) -> dict[str, ModelRoute]:
    """Every model's backends and policy, in the projects where the caller is admin."""
    caller = await authorize(request)
    directory = request.app.state.settings.project_directory()
    return {
        model: route
        for model, route in _book(request).all().items()
        if (held := role_in(caller, route.project, directory)) is not None and held.rank >= Role.admin.rank
    }


class RoutingState(BaseModel):
    """Where this replica's routing table stands against the routes bucket."""

    bucket: str = BUCKET
    revision: int = Field(description="highest bucket revision the table has taken in (0: none yet)")
    following: bool = Field(description="watching the bucket now (false: the bus is down or this gateway has none)")
    synced: bool = Field(description="the current watch has delivered the bucket's state")
    models: int


@admin.get("/routing")
def routing_state(request: Request) -> RoutingState:
    """The bucket revision this replica serves; `modelgallery_gateway_routes_revision` has it too."""
    gateway = _gateway(request)
    follower = gateway.follower
    following = follower is not None and follower.bus.is_connected and follower.synced
    return RoutingState(
        revision=gateway.book.revision,
        following=following,
        synced=follower is not None and follower.synced,
        models=len(gateway.book.all()),
    )


@admin.get("/routes/{model}")
async def get_route(model: str, request: Request) -> ModelRoute:
    route = _admin_in(request, await authorize(request), model, _book(request).get(model))
    if route is None:
        raise NotFound(f"model {model!r} has no route")
    return route


@admin.put("/routes/{model}")
async def put_route(model: str, route: Annotated[ModelRoute, Body()], request: Request) -> ModelRoute:
    """Replace a model's routing entry on this replica alone; it is in the snapshot before this answers.

    For manual operations (the bus down, one replica to fix): the next change of the model in the
    routes bucket replaces it. The deployer's `PUT /api/v1/routes/{model}` changes every replica."""
    check_model_name(model)
    caller = await authorize(request)
    _admin_in(request, caller, model, _book(request).get(model))
    authorize_in(caller, route.project, Role.admin, request.app.state.settings.project_directory())
    await anyio.to_thread.run_sync(_book(request).put, model, route)  # writes the snapshot file
    return route


@admin.delete("/routes/{model}", status_code=204)
async def delete_route(model: str, request: Request) -> Response:
    """Remove a model's routing entry from this replica alone (see PUT)."""
    _admin_in(request, await authorize(request), model, _book(request).get(model))
    if not await anyio.to_thread.run_sync(_book(request).delete, model):
        raise NotFound(f"model {model!r} has no route")
    return Response(status_code=204)
