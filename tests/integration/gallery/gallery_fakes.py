"""Small stand-ins for the services behind the gallery, answering contract-shaped JSON from a `Scene`
the tests fill, and recording what reached them. They are real apps from gallery_common's factory
(bearer-token auth, `{"error": ...}` answers), served by uvicorn on loopback ports, so the gallery's
proxy and aggregations are tested over HTTP as they run in the stack."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from uvicorn_thread import served

from gallery_common.app import create_app
from gallery_common.contracts import VersionPublic
from gallery_common.errors import BadRequest, Conflict, NotFound
from gallery_common.netutil import free_port
from gallery_common.settings import GallerySettings
from gallery_web.app import create as create_gallery
from gallery_web.settings import GalleryWebSettings

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
READER, WRITER, INFERENCE = "g-reader", "g-writer", "g-inference"
TOKENS = f"{READER}:reader,{WRITER}:writer,{INFERENCE}:inference"


@dataclass
class Seen:
    """One request a stand-in received."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Scene:
    """What the stand-ins answer, and what reached them."""

    catalogue: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    searches: dict[str, dict[str, Any]] = field(default_factory=dict)
    deployments: list[dict[str, Any]] = field(default_factory=list)
    quality: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # per model, the monitor's versions
    seen: list[Seen] = field(default_factory=list)

    def requests_to(self, prefix: str) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith(prefix)]


async def _record(scene: Scene, request: Request) -> Seen:
    seen = Seen(
        method=request.method,
        path=request.url.path,
        query=request.url.query,
        headers={k.lower(): v for k, v in request.headers.items()},
        body=await request.body(),
    )
    scene.seen.append(seen)
    return seen


def echo_router(scene: Scene) -> APIRouter:
    """`/echo/...` answers what it received (status from `?status=`); `/bytes/{n}` answers n bytes."""
    router = APIRouter()

    async def echo(request: Request) -> Response:
        seen = await _record(scene, request)
        status = int(request.query_params.get("status", "200"))
        if status in (204, 304):
            return Response(status_code=status)
        body = {
            "method": seen.method,
            "path": seen.path,
            "query": seen.query,
            "authorization": seen.headers.get("authorization"),
            "content_type": seen.headers.get("content-type"),
            "accept": seen.headers.get("accept"),
            "cookie": seen.headers.get("cookie"),
            "body": seen.body.decode("utf-8", "replace"),
        }
        return JSONResponse(body, status_code=status, headers={"X-Internal": "secret", "ETag": '"v1"'})

    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        router.add_api_route("/echo/{rest:path}", echo, methods=[method], name=f"echo_{method.lower()}")

    @router.get("/bytes/{n}")
    async def some_bytes(n: int, request: Request) -> Response:
        await _record(scene, request)
        return Response(b"x" * n, media_type="application/octet-stream")

    @router.get("/text")
    async def text(request: Request) -> Response:
        await _record(scene, request)
        return Response("plain words", media_type="text/plain; charset=utf-8")

    @router.put("/conflict")
    async def conflict(request: Request) -> None:
        await _record(scene, request)
        raise Conflict("that version already has an onnx artifact with another sha256")

    return router


def registry_router(scene: Scene) -> APIRouter:
    router = APIRouter(prefix="/api/v1")

    @router.get("/catalogue")
    async def catalogue(request: Request) -> dict[str, Any]:
        await _record(scene, request)
        if request.query_params.get("sort") not in (None, "name", "updated", "metric"):
            raise BadRequest("sort: one of name, updated, metric")
        return scene.catalogue

    @router.get("/models/{name}/versions")
    async def versions(name: str, request: Request, page_token: str | None = None) -> dict[str, Any]:
        await _record(scene, request)
        if name not in scene.versions:
            raise NotFound(f"no model {name!r}")
        every = scene.versions[name]
        start = int(page_token or 0)
        page = every[start : start + 2]  # small pages, so the gallery has to follow next_page_token
        token = str(start + 2) if start + 2 < len(every) else None
        return {"versions": page, "next_page_token": token}

    @router.get("/models/{name}/versions/{version}")
    async def version(name: str, version: int, request: Request) -> dict[str, Any]:
        await _record(scene, request)
        for found in scene.versions.get(name, []):
            if found["version"] == version:
                return found
        raise NotFound(f"no version {version} of model {name!r}")

    return router


def trainer_router(scene: Scene) -> APIRouter:
    router = APIRouter(prefix="/api/v1")

    @router.get("/runs")
    async def runs(request: Request, model: str | None = None) -> list[dict[str, Any]]:
        await _record(scene, request)
        return [r for r in scene.runs if model is None or r["model"] == model]

    @router.get("/jobs")
    async def jobs(request: Request, model: str | None = None) -> list[dict[str, Any]]:
        await _record(scene, request)
        return [j for j in scene.jobs if model is None or j["model"] == model]

    @router.get("/searches/{search_id}")
    async def search(search_id: str, request: Request) -> dict[str, Any]:
        await _record(scene, request)
        if search_id not in scene.searches:
            raise NotFound(f"no search {search_id!r}")
        return scene.searches[search_id]

    return router


def deployer_router(scene: Scene) -> APIRouter:
    router = APIRouter(prefix="/api/v1")

    @router.get("/deployments")
    async def deployments(request: Request) -> list[dict[str, Any]]:
        await _record(scene, request)
        return [d for d in scene.deployments if d["stage"] in ("production", "canary", "previous")]

    @router.get("/deployments/{model}")
    async def model_deployments(model: str, request: Request) -> list[dict[str, Any]]:
        await _record(scene, request)
        found = [d for d in scene.deployments if d["model"] == model]
        if not found:
            raise NotFound(f"model {model!r} has never been deployed")
        return found

    return router


def monitor_router(scene: Scene) -> APIRouter:
    router = APIRouter(prefix="/api/v1")

    @router.get("/models/{model}/quality")
    async def quality(model: str, request: Request, window_s: float = 3600.0) -> dict[str, Any]:
        await _record(scene, request)
        versions = scene.quality.get(model, [])
        return {"model": model, "window_s": window_s, "bucket_s": 120.0, "versions": versions, "series": []}

    return router


def service_app(name: str, routers: list[APIRouter], home: Path, tokens: str = TOKENS) -> FastAPI:
    settings = GallerySettings(home=home, service_name=name, api_tokens=tokens)  # type: ignore[arg-type]
    return create_app(settings, title=f"{name} (stand-in)", routers=routers, use_bus=False)


@dataclass
class Stack:
    """The gallery's URL and the URL of each stand-in behind it."""

    gallery: str
    services: dict[str, str]


@contextmanager
def gallery_stack(
    scene: Scene,
    home: Path,
    *,
    tokens: str = TOKENS,
    down: tuple[str, ...] = (),
    artifact_root: str | None = None,
    gallery_port: int | None = None,
    **settings: Any,
) -> Iterator[Stack]:
    """Stand-ins for the registry, trainer, deployer and monitor (each also answering `/echo`), an
    address where nothing listens for each name in `down`, and the gallery in front of them (on
    `gallery_port` when given: an identity provider must know its callback beforehand)."""
    routers = {
        "registry": [registry_router(scene)],
        "trainer": [trainer_router(scene)],
        "deployer": [deployer_router(scene)],
        "monitor": [monitor_router(scene)],
    }
    with ExitStack() as stack:
        urls: dict[str, str] = {}
        for name, extra in routers.items():
            if f"{name}_url" in settings:  # another app (a real service) behind the gallery instead
                urls[name] = settings.pop(f"{name}_url")
                continue
            if name in down:
                urls[name] = f"http://127.0.0.1:{free_port()}"
                continue
            port = stack.enter_context(served(service_app(name, [echo_router(scene), *extra], home, tokens)))
            urls[name] = f"http://127.0.0.1:{port}"
        config = GalleryWebSettings(
            home=home,
            api_tokens=tokens,  # type: ignore[arg-type]
            artifact_root=artifact_root or (home / "artifacts").as_uri(),
            **{f"{name}_url": url for name, url in urls.items()},
            **settings,
        )
        port = stack.enter_context(served(create_gallery(config), gallery_port, ready_path="/readyz"))
        yield Stack(gallery=f"http://127.0.0.1:{port}", services=urls)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def version(
    model: str,
    number: int,
    *,
    status: str = "validated",
    run_id: str | None = None,
    job_id: str | None = None,
    fingerprint: str | None = None,
    parent: int | None = None,
    aliases: list[str] | None = None,
    artifacts: dict[str, dict[str, Any]] | None = None,
    signature: dict[str, Any] | None = None,
    class_names: list[str] | None = None,
) -> dict[str, Any]:
    """A version as the registry's REST API answers it (validated against `VersionPublic`)."""
    record = VersionPublic.model_validate(
        {
            "name": model,
            "version": number,
            "semver": f"1.{number - 1}.0",
            "status": status,
            "description": None,
            "signature": signature,
            "metrics": {"accuracy": 0.9 + number / 100},
            "tags": {},
            "lineage": {
                "training_job_id": job_id,
                "dataset_fingerprint": fingerprint,
                "config_hash": None,
                "parent_version": parent,
            },
            "run_id": run_id,
            "source_event_id": None,
            "source": None,
            "task": "classification",
            "class_names": class_names,
            "evaluation_report": None,
            "rejection_reasons": None,
            "artifacts": {
                role: {"role": role, "created_at": NOW.isoformat(), "format": None, "size": None, **ref}
                for role, ref in (artifacts or {}).items()
            },
            "aliases": aliases or [],
            "created_at": NOW.isoformat(),
            "updated_at": NOW.isoformat(),
        }
    )
    return record.model_dump(mode="json")


def deployment(model: str, number: int, stage: str, percent: float, variant: str = "fp32") -> dict[str, Any]:
    """A deployment as the deployer's `GET /api/v1/deployments` answers it."""
    return {
        "id": f"{model}-v{number}-{variant}",
        "model": model,
        "version": number,
        "variant": variant,
        "stage": stage,
        "traffic_percent": percent,
        "state": "ready" if stage in ("production", "canary", "previous") else "stopped",
        "desired_replicas": 1,
        "ready_replicas": 1,
        "replicas": [],
        "endpoints": [],
        "artifact": {"uri": "file:///a/model.onnx", "sha256": "a" * 64},
        "reason": None,
        "fallback": None,
        "analysis_due_at": None,
        "retire_at": None,
        "updated_at": "2026-12-01T12:00:00Z",
    }
