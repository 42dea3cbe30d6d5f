"""What the gateway should route for a model, built from the deployer's records, and the client that sets it.

Production takes `100 - canary%`, the canary its share; the previous production version stays as a
weight-0 fallback link until its drain ends. Every ready replica is its own backend, so the
gateway's breaker and fallback chain see replicas, not whole versions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import httpx

from gallery_common.errors import GalleryError, Unavailable
from gallery_common.telemetry import get_logger

from ..gateway.routes import Backend, BackendRole, ModelRoute, RoutePolicy
from .records import DeploymentRecord, Stage

log = get_logger(__name__)

_ORDER = {Stage.production: 0, Stage.canary: 1, Stage.previous: 2}


def build_route(
    records: Sequence[DeploymentRecord], endpoints: Mapping[str, Sequence[str]], policy: RoutePolicy
) -> ModelRoute | None:
    """The route for one model's serving records; None when nothing has a ready endpoint."""
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
                    version=str(record.version),
                    variant=record.variant,
                    weight=share if stage is not Stage.previous else 0.0,
                    role=BackendRole.canary if stage is Stage.canary else BackendRole.primary,
                    fallback_order=_ORDER[stage],
                )
            )
    if not any(b.weight > 0 for b in backends):
        return None
    return ModelRoute(backends=backends, policy=policy)


class GatewayClient:
    """Sets and removes routes through the gateway's admin API."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout)

    async def get(self, model: str) -> ModelRoute | None:
        response = await self._call("GET", f"/admin/routes/{model}")
        if response.status_code == 404:
            return None
        return ModelRoute.model_validate(response.json())

    async def put(self, model: str, route: ModelRoute) -> None:
        response = await self._call("PUT", f"/admin/routes/{model}", json=route.model_dump(mode="json"))
        if response.status_code != 200:
            raise GalleryError(f"gateway refused the route of {model!r}: {response.status_code} {response.text[:300]}")
        log.info(
            "route_set",
            model=model,
            backends=[(b.id, round(b.weight, 2)) for b in route.backends],
            asleep=route.policy.asleep,
        )

    async def delete(self, model: str) -> None:
        response = await self._call("DELETE", f"/admin/routes/{model}")
        if response.status_code not in (204, 404):
            raise GalleryError(f"gateway refused to delete the route of {model!r}: {response.status_code}")

    async def _call(self, method: str, path: str, json: object = None) -> httpx.Response:
        try:
            return await self._http.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise Unavailable(f"gateway at {self.base_url} unreachable ({type(exc).__name__}: {exc})") from exc

    async def close(self) -> None:
        await self._http.aclose()
