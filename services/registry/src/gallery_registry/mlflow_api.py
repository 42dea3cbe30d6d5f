"""A subset of the MLflow Model Registry REST API, so an unmodified `mlflow.MlflowClient` works.

Paths, methods and field names follow mlflow's `model_registry.proto`: GET requests carry their
fields as query parameters, the others as a JSON body. Errors answer in MLflow's shape,
`{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": ...}`, with the status the client expects.

Projects are checked as in the native API (`project_access`): searches show the models of the
projects the caller holds a role in, a model in any other project answers RESOURCE_DOES_NOT_EXIST
exactly like a missing one, and a create acts in the `X-Gallery-Project` header's project (else the
caller's one project, else `default`), since MLflow's messages have no field for it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gallery_common.audit import AuditAction
from gallery_common.auth import requires
from gallery_common.deps import CallerDep
from gallery_common.errors import Conflict, GalleryError, InvalidRequest, error_headers
from gallery_common.settings import Role

from . import mlflow_filter
from .audit_api import AuditRecorder, AuditRecorderDep, metadata_of
from .deps import RegistrySettingsDep, RegistryStoreDep, check_alias_permission
from .paging import decode_page_token
from .project_access import ProjectAccessDep
from .schemas import ModelCreate, ModelPublic, ModelUpdate, VersionCreate, VersionPublic, VersionUpdate
from .store import RegistryStore

_MAX_PAGE = 1000

# MLflow error codes and the HTTP status its client expects with each.
_CODES: dict[int, tuple[str, int]] = {
    400: ("INVALID_PARAMETER_VALUE", 400),
    401: ("UNAUTHENTICATED", 401),
    403: ("PERMISSION_DENIED", 403),
    404: ("RESOURCE_DOES_NOT_EXIST", 404),
    409: ("RESOURCE_CONFLICT", 409),
    413: ("INVALID_PARAMETER_VALUE", 413),
    422: ("INVALID_PARAMETER_VALUE", 400),
    503: ("TEMPORARILY_UNAVAILABLE", 503),
}


def mlflow_error(exc: GalleryError) -> JSONResponse:
    if isinstance(exc, Conflict) and "already exists" in exc.message:
        code, status = "RESOURCE_ALREADY_EXISTS", 400
    else:
        code, status = _CODES.get(exc.status_code, ("INTERNAL_ERROR", 500))
    return JSONResponse({"error_code": code, "message": exc.message}, status_code=status, headers=error_headers(exc))


class MlflowRoute(APIRoute):
    """Answers errors in MLflow's shape: those of the route, and (through `error_response`, which
    `AccessMiddleware` uses) the auth, role and body-size refusals made before it runs."""

    error_response = staticmethod(mlflow_error)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def mlflow_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except GalleryError as exc:
                return mlflow_error(exc)
            except (RequestValidationError, ValidationError) as exc:
                return mlflow_error(InvalidRequest(_describe(exc.errors())))

        return mlflow_handler


def _describe(errors: Any) -> str:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err.get('loc', ()) if p not in ('body', 'query')) or 'body'}: {err.get('msg')}"
        for err in list(errors)[:5]
    )
    return f"invalid request: {problems}"


router = APIRouter(prefix="/api/2.0/mlflow", tags=["mlflow"], route_class=MlflowRoute)
ADMIN = [requires(Role.admin)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Tag(_Body):
    key: str
    value: str = ""


class CreateRegisteredModel(_Body):
    name: str
    tags: list[Tag] = Field(default_factory=list)
    description: str | None = None


class NameBody(_Body):
    name: str


class UpdateRegisteredModel(_Body):
    name: str
    description: str | None = None


class SetTag(_Body):
    name: str
    key: str
    value: str


class DeleteTag(_Body):
    name: str
    key: str


class CreateModelVersion(_Body):
    name: str
    source: str | None = None
    run_id: str | None = None
    tags: list[Tag] = Field(default_factory=list)
    description: str | None = None


class VersionBody(_Body):
    name: str
    version: int = Field(ge=1)


class UpdateModelVersion(VersionBody):
    description: str | None = None


class SetVersionTag(VersionBody):
    key: str
    value: str


class DeleteVersionTag(VersionBody):
    key: str


class SetAlias(_Body):
    name: str
    alias: str
    version: int = Field(ge=1)


class LatestVersions(_Body):
    name: str
    stages: list[str] = Field(default_factory=list)


class DeleteAlias(_Body):
    name: str
    alias: str


def _ms(value: Any) -> int:
    return int(value.timestamp() * 1000)


def version_json(v: VersionPublic) -> dict[str, Any]:
    """A ModelVersion message; every version reads as READY (the registry has no async creation)."""
    doc: dict[str, Any] = {
        "name": v.name,
        "version": str(v.version),
        "creation_timestamp": _ms(v.created_at),
        "last_updated_timestamp": _ms(v.updated_at),
        "current_stage": "None",
        "source": v.source or "",
        "status": "READY",
        "tags": [{"key": k, "value": val} for k, val in v.tags.items()],
        "aliases": v.aliases,
    }
    if v.description is not None:
        doc["description"] = v.description
    if v.run_id is not None:
        doc["run_id"] = v.run_id
    return doc


def model_json(m: ModelPublic, latest: VersionPublic | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": m.name,
        "creation_timestamp": _ms(m.created_at),
        "last_updated_timestamp": _ms(m.updated_at),
        "tags": [{"key": k, "value": v} for k, v in m.tags.items()],
        "aliases": [{"alias": a, "version": str(v)} for a, v in m.aliases.items()],
    }
    if m.description is not None:
        doc["description"] = m.description
    if latest is not None:
        doc["latest_versions"] = [version_json(latest)]
    return doc


def _offset(page_token: str | None) -> int:
    return decode_page_token(page_token) if page_token else 0


@router.post("/registered-models/create", summary="MLflow: create a registered model")
def create_registered_model(
    body: CreateRegisteredModel, store: RegistryStoreDep, access: ProjectAccessDep
) -> dict[str, Any]:
    project = access.home(None)
    model = store.create_model(
        ModelCreate(
            name=body.name, description=body.description, tags={t.key: t.value for t in body.tags}, project=project
        )
    )
    return {"registered_model": model_json(model)}


@router.get("/registered-models/get", summary="MLflow: get a registered model")
def get_registered_model(name: str, store: RegistryStoreDep, access: ProjectAccessDep) -> dict[str, Any]:
    access.model(name, Role.reader)
    model = store.get_model(name)
    latest = store.latest_version(name) if model.latest_version is not None else None
    return {"registered_model": model_json(model, latest)}


@router.get("/registered-models/search", summary="MLflow: search registered models")
def search_registered_models(
    store: RegistryStoreDep,
    access: ProjectAccessDep,
    filter: str | None = None,
    max_results: Annotated[int, Query(ge=1)] = 100,
    order_by: Annotated[list[str], Query()] = [],  # noqa: B006
    page_token: str | None = None,
) -> dict[str, Any]:
    query = mlflow_filter.model_query(filter, order_by, min(max_results, _MAX_PAGE), _offset(page_token))
    query.projects = access.listed(None)
    page = store.search_models(query)
    doc: dict[str, Any] = {"registered_models": [model_json(m) for m in page.models]}
    if page.next_page_token:
        doc["next_page_token"] = page.next_page_token
    return doc


def _record_edit(
    audit: AuditRecorder,
    project: str,
    model: str,
    version: int | None,
    before: dict[str, Any],
    after: dict[str, Any],
) -> None:
    target = model if version is None else f"{model}/{version}"
    audit.record_edit(
        AuditAction.metadata_change,
        target,
        before,
        after,
        project=project,
        model=model,
        version=version,
        reason="changed through the MLflow API",
    )


@router.patch("/registered-models/update", summary="MLflow: update a registered model")
def update_registered_model(
    body: UpdateRegisteredModel, store: RegistryStoreDep, access: ProjectAccessDep, audit: AuditRecorderDep
) -> dict[str, Any]:
    project = access.model(body.name, Role.writer)
    before = metadata_of(store.get_model(body.name))
    model = store.update_model(body.name, ModelUpdate(description=body.description))
    _record_edit(audit, project, body.name, None, before, metadata_of(model))
    return {"registered_model": model_json(model)}


@router.delete("/registered-models/delete", summary="MLflow: delete a registered model", dependencies=ADMIN)
def delete_registered_model(
    body: NameBody, store: RegistryStoreDep, access: ProjectAccessDep, audit: AuditRecorderDep
) -> dict[str, Any]:
    project = access.model(body.name, Role.admin)
    before = store.get_model(body.name)
    store.delete_model(body.name)
    audit.record(
        AuditAction.deletion,
        body.name,
        model=body.name,
        before={"latest_version": before.latest_version, "aliases": before.aliases},
        reason="deleted through the MLflow API",
        project=project,
    )
    return {}


@router.post("/registered-models/set-tag", summary="MLflow: set a registered model tag")
def set_registered_model_tag(
    body: SetTag, store: RegistryStoreDep, access: ProjectAccessDep, audit: AuditRecorderDep
) -> dict[str, Any]:
    project = access.model(body.name, Role.writer)
    before = metadata_of(store.get_model(body.name))
    store.set_model_tag(body.name, body.key, body.value)
    _record_edit(audit, project, body.name, None, before, metadata_of(store.get_model(body.name)))
    return {}


@router.delete("/registered-models/delete-tag", summary="MLflow: delete a registered model tag")
def delete_registered_model_tag(
    body: DeleteTag, store: RegistryStoreDep, access: ProjectAccessDep, audit: AuditRecorderDep
) -> dict[str, Any]:
    project = access.model(body.name, Role.writer)
    before = metadata_of(store.get_model(body.name))
    store.delete_model_tag(body.name, body.key)
    _record_edit(audit, project, body.name, None, before, metadata_of(store.get_model(body.name)))
    return {}


@router.post("/registered-models/alias", summary="MLflow: set a registered model alias")
def set_registered_model_alias(
    body: SetAlias,
    store: RegistryStoreDep,
    settings: RegistrySettingsDep,
    caller: CallerDep,
    access: ProjectAccessDep,
    audit: AuditRecorderDep,
) -> dict[str, Any]:
    project = access.model(body.name, Role.writer)
    check_alias_permission(settings, caller, body.alias, project)
    before = store.get_model(body.name).aliases.get(body.alias)
    reason = "set through the MLflow API"
    store.set_alias(body.name, body.alias, body.version, actor=caller.name, reason=reason)
    if before != body.version:
        audit.record(
            AuditAction.alias_move,
            f"{body.name}@{body.alias}",
            model=body.name,
            version=body.version,
            alias=body.alias,
            before={"version": before},
            after={"version": body.version},
            reason=reason,
            project=project,
        )
    return {}


@router.delete("/registered-models/alias", summary="MLflow: delete a registered model alias")
def delete_registered_model_alias(
    body: DeleteAlias,
    store: RegistryStoreDep,
    settings: RegistrySettingsDep,
    caller: CallerDep,
    access: ProjectAccessDep,
    audit: AuditRecorderDep,
) -> dict[str, Any]:
    project = access.model(body.name, Role.writer)
    check_alias_permission(settings, caller, body.alias, project)
    before = store.get_alias(body.name, body.alias).version
    reason = "deleted through the MLflow API"
    store.delete_alias(body.name, body.alias, actor=caller.name, reason=reason)
    audit.record(
        AuditAction.alias_move,
        f"{body.name}@{body.alias}",
        model=body.name,
        version=before,
        alias=body.alias,
        before={"version": before},
        after={"version": None},
        reason=reason,
        project=project,
    )
    return {}


@router.get("/registered-models/alias", summary="MLflow: get a model version by alias")
def get_model_version_by_alias(
    name: str, alias: str, store: RegistryStoreDep, access: ProjectAccessDep
) -> dict[str, Any]:
    access.model(name, Role.reader)
    return {"model_version": version_json(store.get_version_by_alias(name, alias))}


@router.get("/registered-models/get-latest-versions", summary="MLflow: the latest version of a model")
def get_latest_versions(
    name: str,
    store: RegistryStoreDep,
    access: ProjectAccessDep,
    stages: Annotated[list[str], Query()] = [],  # noqa: B006
) -> dict[str, Any]:
    """The newest version; the registry has no MLflow stages, so every version is in stage 'None'."""
    access.model(name, Role.reader)
    return _latest_versions(store, name, stages)


@router.post("/registered-models/get-latest-versions", summary="MLflow: the latest version of a model")
def post_latest_versions(body: LatestVersions, store: RegistryStoreDep, access: ProjectAccessDep) -> dict[str, Any]:
    access.model(body.name, Role.reader)
    return _latest_versions(store, body.name, body.stages)


def _latest_versions(store: RegistryStore, name: str, stages: list[str]) -> dict[str, Any]:
    model = store.get_model(name)
    if model.latest_version is None or (stages and "none" not in {s.lower() for s in stages}):
        return {"model_versions": []}
    return {"model_versions": [version_json(store.latest_version(name))]}


@router.post("/model-versions/create", summary="MLflow: create a model version")
def create_model_version(
    body: CreateModelVersion, store: RegistryStoreDep, access: ProjectAccessDep, audit: AuditRecorderDep
) -> dict[str, Any]:
    project = access.model(body.name, Role.writer)
    version = store.register_version(
        body.name,
        VersionCreate(
            source=body.source or None,
            run_id=body.run_id or None,
            description=body.description,
            tags={t.key: t.value for t in body.tags},
        ),
    )
    audit.record(
        AuditAction.registration,
        f"{body.name}/{version.version}",
        model=body.name,
        version=version.version,
        after={"version": version.version, "semver": version.semver, "status": version.status},
        reason="registered through the MLflow API",
        project=project,
    )
    return {"model_version": version_json(version)}


@router.get("/model-versions/get", summary="MLflow: get a model version")
def get_model_version(
    name: str, version: Annotated[int, Query(ge=1)], store: RegistryStoreDep, access: ProjectAccessDep
) -> dict[str, Any]:
    access.model(name, Role.reader)
    return {"model_version": version_json(store.get_version(name, version))}


@router.get("/model-versions/search", summary="MLflow: search model versions")
def search_model_versions(
    store: RegistryStoreDep,
    access: ProjectAccessDep,
    filter: str | None = None,
    max_results: Annotated[int, Query(ge=1)] = 10_000,
    order_by: Annotated[list[str], Query()] = [],  # noqa: B006
    page_token: str | None = None,
) -> dict[str, Any]:
    query = mlflow_filter.version_query(filter, order_by, min(max_results, _MAX_PAGE), _offset(page_token))
    query.projects = access.listed(None)
    page = store.search_versions(query)
    doc: dict[str, Any] = {"model_versions": [version_json(v) for v in page.versions]}
    if page.next_page_token:
        doc["next_page_token"] = page.next_page_token
    return doc


@router.patch("/model-versions/update", summary="MLflow: update a model version")
def update_model_version(
    body: UpdateModelVersion, store: RegistryStoreDep, access: ProjectAccessDep, audit: AuditRecorderDep
) -> dict[str, Any]:
    project = access.model(body.name, Role.writer)
    before = metadata_of(store.get_version(body.name, body.version))
    version = store.update_version(body.name, body.version, VersionUpdate(description=body.description))
    _record_edit(audit, project, body.name, body.version, before, metadata_of(version))
    return {"model_version": version_json(version)}


@router.delete("/model-versions/delete", summary="MLflow: delete a model version", dependencies=ADMIN)
def delete_model_version(
    body: VersionBody, store: RegistryStoreDep, caller: CallerDep, access: ProjectAccessDep, audit: AuditRecorderDep
) -> dict[str, Any]:
    project = access.model(body.name, Role.admin)
    before = store.get_version(body.name, body.version)
    store.delete_version(body.name, body.version, actor=caller.name)
    audit.record(
        AuditAction.deletion,
        f"{body.name}/{body.version}",
        model=body.name,
        version=body.version,
        before={"status": before.status, "semver": before.semver, "aliases": before.aliases},
        reason="deleted through the MLflow API",
        project=project,
    )
    return {}


@router.get("/model-versions/get-download-uri", summary="MLflow: where a model version's files are")
def get_model_version_download_uri(
    name: str, version: Annotated[int, Query(ge=1)], store: RegistryStoreDep, access: ProjectAccessDep
) -> dict[str, Any]:
    """The version's source, or else its ONNX (then weights) artifact URI."""
    access.model(name, Role.reader)
    found = store.get_version(name, version)
    uri = found.source
    for role in ("onnx", "weights"):
        artifact = found.artifact(role)
        if uri is None and artifact is not None:
            uri = artifact.uri
    if uri is None:
        raise InvalidRequest(f"version {version} of model {name!r} has no source and no onnx or weights artifact")
    return {"artifact_uri": uri}


@router.post("/model-versions/set-tag", summary="MLflow: set a model version tag")
def set_model_version_tag(
    body: SetVersionTag, store: RegistryStoreDep, access: ProjectAccessDep, audit: AuditRecorderDep
) -> dict[str, Any]:
    project = access.model(body.name, Role.writer)
    before = metadata_of(store.get_version(body.name, body.version))
    store.set_version_tag(body.name, body.version, body.key, body.value)
    after = metadata_of(store.get_version(body.name, body.version))
    _record_edit(audit, project, body.name, body.version, before, after)
    return {}


@router.delete("/model-versions/delete-tag", summary="MLflow: delete a model version tag")
def delete_model_version_tag(
    body: DeleteVersionTag, store: RegistryStoreDep, access: ProjectAccessDep, audit: AuditRecorderDep
) -> dict[str, Any]:
    project = access.model(body.name, Role.writer)
    before = metadata_of(store.get_version(body.name, body.version))
    store.delete_version_tag(body.name, body.version, body.key)
    after = metadata_of(store.get_version(body.name, body.version))
    _record_edit(audit, project, body.name, body.version, before, after)
    return {}
