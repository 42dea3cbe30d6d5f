"""The gallery's API: aggregations that join what several services say (`/api/gallery/...`) and the
proxy to each service (`/api/<service>/...`).

Every route needs `reader` at the gallery, whatever the method (a write through the proxy is then
judged by the service it reaches, with the same token). The aggregations call the services with the
caller's own token, so nobody sees through the gallery what a service would not show them.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.background import BackgroundTask

from gallery_common.auth import requires
from gallery_common.contracts import VersionPublic
from gallery_common.deps import get_resources
from gallery_common.errors import GalleryError, NotFound
from gallery_common.events import NAME_PATTERN
from gallery_common.settings import Role

from . import downloads
from .examples import ExampleReader, ExamplesView
from .lineage import SERVING_STAGES, LineageGraph, build_lineage
from .settings import GalleryWebSettings
from .upstream import Upstreams

READER = [requires(Role.reader)]
MAX_VERSION_PAGES = 10
Name = Annotated[str, Path(pattern=NAME_PATTERN)]


@dataclass
class Gallery:
    """What the gallery's routes work with: its settings, the services behind it, the example reader."""

    settings: GalleryWebSettings
    upstreams: Upstreams
    examples: ExampleReader


async def get_gallery(request: Request) -> Gallery:
    return get_resources(request).core_as(Gallery)


GalleryDep = Annotated[Gallery, Depends(get_gallery)]

aggregations = APIRouter(prefix="/api/gallery", tags=["gallery"], dependencies=READER)
proxy = APIRouter(tags=["proxy"], dependencies=READER)


def _auth(request: Request) -> str | None:
    return request.headers.get("authorization")


def deployment_summary(deployments: list[dict[str, Any]]) -> dict[str, Any]:
    """A model's serving state from the deployer's deployments of it: `canary` while a canary takes
    traffic, `serving` while any version serves, else `none`; and the traffic per serving version."""
    serving = [d for d in deployments if d.get("stage") in SERVING_STAGES]
    traffic = [
        {"version": d.get("version"), "stage": d.get("stage"), "percent": float(d.get("traffic_percent") or 0.0)}
        for d in sorted(serving, key=lambda d: (-(d.get("traffic_percent") or 0.0), -(d.get("version") or 0)))
    ]
    state = "canary" if any(d.get("stage") == "canary" for d in serving) else "serving" if serving else "none"
    return {"state": state, "traffic": traffic}


@aggregations.get("/catalogue", summary="The catalogue with each model's deployment state and traffic")
async def catalogue(request: Request, gallery: GalleryDep) -> JSONResponse:
    """The registry's `GET /api/v1/catalogue` page (same query), each model with `deployment` from the
    deployer: `{"state": "serving"|"canary"|"none"|"unknown", "traffic": [{version, stage, percent}]}`
    (`unknown` when the deployer does not answer; `warnings` then says why)."""
    auth = _auth(request)
    query = request.scope.get("query_string", b"").decode("latin-1")
    upstreams = gallery.upstreams
    page_call = upstreams.get_json("registry", "/api/v1/catalogue", authorization=auth, params=query or None)
    deployments_call = upstreams.get_json("deployer", "/api/v1/deployments", authorization=auth)
    answers = await asyncio.gather(page_call, deployments_call, return_exceptions=True)
    page: Any = answers[0]
    deployments: Any = answers[1]
    if isinstance(page, BaseException):
        raise page
    warnings: list[str] = []
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if isinstance(deployments, GalleryError):
        warnings.append(f"deployments unknown: {deployments.message}")
    elif isinstance(deployments, BaseException):
        raise deployments
    else:
        for deployment in deployments if isinstance(deployments, list) else []:
            by_model[str(deployment.get("model"))].append(deployment)
    for entry in page.get("models", []):
        if warnings:
            entry["deployment"] = {"state": "unknown", "traffic": []}
        else:
            entry["deployment"] = deployment_summary(by_model.get(entry.get("name"), []))
    page["warnings"] = warnings
    return JSONResponse(page)


async def _versions(upstreams: Upstreams, name: str, auth: str | None) -> list[dict[str, Any]]:
    versions: list[dict[str, Any]] = []
    token: str | None = None
    for _ in range(MAX_VERSION_PAGES):
        params: dict[str, Any] = {"limit": 100, "order": "asc"}
        if token:
            params["page_token"] = token
        page = await upstreams.get_json(
            "registry", f"/api/v1/models/{quote(name, safe='')}/versions", authorization=auth, params=params
        )
        versions.extend(page.get("versions", []))
        token = page.get("next_page_token")
        if not token:
            break
    return versions


async def _optional(call: Any, what: str, warnings: list[str], empty: Any) -> Any:
    """A read that may fail without spoiling the rest: its answer, or `empty` and a warning saying why."""
    try:
        return await call
    except NotFound:
        return empty
    except GalleryError as exc:
        warnings.append(f"{what}: {exc.message}")
        return empty


@aggregations.get("/models/{name}/lineage", summary="A model's lineage as a graph", response_model=LineageGraph)
async def lineage(name: Name, request: Request, gallery: GalleryDep) -> LineageGraph:
    """Data set → training run (its search, its parent version) → version → variants → deployments,
    each node with a link to its page. The registry must answer; what the trainer or the deployer
    cannot say is left out and named in `warnings`."""
    auth = _auth(request)
    upstreams = gallery.upstreams
    quoted = quote(name, safe="")
    warnings: list[str] = []
    versions = await _versions(upstreams, name, auth)
    runs, jobs, deployments = await asyncio.gather(
        _optional(
            upstreams.get_json("trainer", "/api/v1/runs", authorization=auth, params={"model": name, "limit": 1000}),
            "runs",
            warnings,
            [],
        ),
        _optional(
            upstreams.get_json("trainer", "/api/v1/jobs", authorization=auth, params={"model": name, "limit": 1000}),
            "jobs",
            warnings,
            [],
        ),
        _optional(
            upstreams.get_json("deployer", f"/api/v1/deployments/{quoted}", authorization=auth, params={}),
            "deployments",
            warnings,
            [],
        ),
    )
    search_ids = sorted({str(j["search_id"]) for j in jobs if j.get("search_id")})
    searches = await asyncio.gather(
        *(
            _optional(
                upstreams.get_json("trainer", f"/api/v1/searches/{quote(s, safe='')}", authorization=auth),
                f"search {s}",
                warnings,
                None,
            )
            for s in search_ids
        )
    )
    return build_lineage(
        name,
        versions,
        runs,
        jobs,
        [s for s in searches if isinstance(s, dict)],
        deployments,
        warnings=sorted(set(warnings)),
    )


@aggregations.get(
    "/models/{name}/versions/{version}/examples",
    summary="Held-out examples from a version's test split",
    response_model=ExamplesView,
)
async def examples(
    name: Name,
    version: Annotated[int, Path(ge=1)],
    request: Request,
    gallery: GalleryDep,
    n: Annotated[int, Query(ge=1, le=1000, description="how many rows")] = 12,
) -> ExamplesView:
    """`n` rows (at most GALLERY_MAX_EXAMPLES) of the version's test split with their labels, in the
    shape the model takes; `image` says whether a row is a picture (`image_shape`: how to draw it)."""
    found = await gallery.upstreams.get_json(
        "registry", f"/api/v1/models/{quote(name, safe='')}/versions/{version}", authorization=_auth(request)
    )
    record = VersionPublic.model_validate(found)
    count = min(n, gallery.settings.max_examples)
    return await anyio.to_thread.run_sync(gallery.examples.examples, record, count)


@aggregations.get(
    "/models/{name}/versions/{version}/artifacts/{role}",
    summary="Download one of a version's artifacts (onnx, a variant, edge_bundle, model-card, ...)",
    response_class=FileResponse,
)
async def download(
    name: Name, version: Annotated[int, Path(ge=1)], role: str, request: Request, gallery: GalleryDep
) -> FileResponse:
    """The artifact the registry holds for the version under `role`, checked against its sha256 and sent
    as an attachment named `<model>-v<version>-<role><suffix>`."""
    found = await gallery.upstreams.get_json(
        "registry", f"/api/v1/models/{quote(name, safe='')}/versions/{version}", authorization=_auth(request)
    )
    record = VersionPublic.model_validate(found)
    store = get_resources(request).store
    assert store is not None
    workdir = gallery.settings.home / "tmp"
    workdir.mkdir(parents=True, exist_ok=True)
    copy = await anyio.to_thread.run_sync(downloads.fetch, store, record, role, workdir)
    return FileResponse(
        copy.path,
        media_type=copy.media_type,
        filename=copy.filename,
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"},
        background=BackgroundTask(downloads.discard, copy),
    )


PROXY_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


@proxy.api_route("/api/{service}/{path:path}", methods=PROXY_METHODS, include_in_schema=False)
async def forward(service: str, path: str, request: Request, gallery: GalleryDep) -> Response:
    """`/api/<service>/<path>?<query>` → `<service URL>/<path>?<query>` with the method, body, Content-Type,
    Accept and Authorization; the service's status, body and Content-Type come back."""
    return await gallery.upstreams.proxy(request, service)
