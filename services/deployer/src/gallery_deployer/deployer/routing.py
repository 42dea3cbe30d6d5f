"""What the gateways should route for a model, built from the deployer's records, and where it is set.

Production takes `100 - canary%`, the canary its share; the previous production version stays as a
weight-0 fallback link until its drain ends. Every ready replica is its own backend, so the
gateway's breaker and fallback chain see replicas, not whole versions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gallery_common.projects import DEFAULT_PROJECT
from gallery_common.routes_kv import RoutesBucket
from gallery_common.telemetry import get_logger

from ..gateway.routes import Backend, BackendRole, ModelRoute, RoutePolicy
from .records import DeploymentRecord, Stage

log = get_logger(__name__)

_ORDER = {Stage.production: 0, Stage.canary: 1, Stage.previous: 2}


def build_route(
    records: Sequence[DeploymentRecord],
    endpoints: Mapping[str, Sequence[str]],
    policy: RoutePolicy,
    grpc_endpoints: Mapping[str, str] | None = None,
) -> ModelRoute | None:
    """The route for one model's serving records; None when nothing has a ready endpoint. A backend gets
    the gRPC address `grpc_endpoints` gives its URL (the gateway's gRPC front forwards there)."""
    grpc_endpoints = grpc_endpoints or {}
    backends: list[Backend] = []
    for record in sorted(records, key=lambda r: _ORDER.get(Stage(r.stage), 9)):
        stage = Stage(record.stage)
        if stage not in _ORDER:
            continue
        urls = list(endpoints.get(record.id, ()))
        share = record.traffic_percent / len(urls) if urls else 0.0
        for index, url in enumerate(urls):
            backends.append(
                Backend(
                    id=f"{record.id}-{index}"[:64],
                    url=url,
                    grpc=grpc_endpoints.get(url),
                    version=str(record.version),
                    variant=record.variant,
                    weight=share if stage is not Stage.previous else 0.0,
                    role=BackendRole.canary if stage is Stage.canary else BackendRole.primary,
                    fallback_order=_ORDER[stage],
                )
            )
    if not any(b.weight > 0 for b in backends):
        return None
    project = records[0].project if records else DEFAULT_PROJECT
    return ModelRoute(project=project, backends=backends, policy=policy)


class GatewayRoutes:
    """Sets and removes models' routes in the routes bucket, which every gateway replica follows."""

    def __init__(self, bucket: RoutesBucket) -> None:
        self.bucket = bucket

    async def get(self, model: str) -> tuple[ModelRoute, int] | None:
        """A model's route and the bucket revision that holds it; None when it has none."""
        entry = await self.bucket.get(model)
        if entry is None:
            return None
        return ModelRoute.model_validate_json(entry.value), entry.revision

    async def put(self, model: str, route: ModelRoute) -> int:
        revision = await self.bucket.put(model, route.model_dump_json().encode())
        log.info(
            "route_set",
            model=model,
            revision=revision,
            backends=[(b.id, round(b.weight, 2)) for b in route.backends],
            asleep=route.policy.asleep,
        )
        return revision

    async def delete(self, model: str) -> bool:
        deleted = await self.bucket.delete(model)
        if deleted:
            log.info("route_deleted", model=model)
        return deleted
