"""The registry's native REST API under `/api/v1`: a thin adapter over `RegistryStore`.

Routes are plain `def` functions: FastAPI runs them in its thread pool, so SQL never blocks the
event loop. What decides what the gate lets through or removes a record (deletions, status changes,
validation policies, protected aliases) needs the admin role; a writer registers, tags and attaches
artifacts. Each role is checked in the project of the model a request touches (`project_access`):
a model in a project the caller holds no role in answers as one that does not exist.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, Response, status
from pydantic import BaseModel

from gallery_common.audit import AuditAction
from gallery_common.auth import requires
from gallery_common.deps import CallerDep
from gallery_common.errors import BadRequest, InvalidRequest, NotFound
from gallery_common.events import ArtifactRef
from gallery_common.settings import Role

from .audit_api import AuditRecorderDep, metadata_of
from .deps import ModelCardsDep, RegistrySettingsDep, RegistryStoreDep, check_alias_permission
from .model_card import optimizer_changed
from .paging import decode_page_token
from .project_access import ProjectAccessDep
from .schemas import (
    AliasChange,
    AliasPublic,
    AliasSet,
    ArtifactPublic,
    ArtifactRole,
    LineagePublic,
    ModelCreate,
    ModelOrder,
    ModelPage,
    ModelPublic,
    ModelQuery,
    ModelUpdate,
    ValidationPolicy,
    ValidationPolicyUpdate,
    VersionCreate,
    VersionOrder,
    VersionPage,
    VersionPublic,
    VersionQuery,
    VersionStatus,
    VersionUpdate,
    check_tag,
)

router = APIRouter(prefix="/api/v1", tags=["registry"])
ADMIN = [requires(Role.admin)]

Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
PageToken = Annotated[str | None, Query(description="next_page_token of the previous page")]
Offset = Annotated[int | None, Query(ge=0, description="rows to skip (instead of page_token)")]
Direction = Annotated[Literal["asc", "desc"], Query(description="sort direction")]
Reason = Annotated[str | None, Query(max_length=2000, description="why, for the alias history")]
ProjectFilter = Annotated[
    str | None, Query(max_length=63, description="only this project's models (404 unless you hold a role there)")
]


def _json(model: BaseModel, status_code: int = status.HTTP_200_OK) -> Response:
    """Serialise once with pydantic's Rust encoder; FastAPI would validate and encode the model again.

    Used on the hot routes (register, get, resolve); the decorator still declares the response model.
    """
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


def _offset(page_token: str | None, offset: int | None) -> int:
    if page_token is not None and offset is not None:
        raise BadRequest("give page_token or offset, not both")
    if page_token is not None:
        return decode_page_token(page_token)
    return offset or 0


def _parse_tags(tags: list[str]) -> dict[str, str | None]:
    parsed: dict[str, str | None] = {}
    for item in tags:
        key, sep, value = item.partition("=")
        if not key:
            raise BadRequest(f"invalid tag filter {item!r}: use KEY or KEY=VALUE")
        parsed[key] = value if sep else None
    return parsed


@router.post("/models", status_code=status.HTTP_201_CREATED, summary="Create a model")
def create_model(data: ModelCreate, store: RegistryStoreDep, access: ProjectAccessDep) -> ModelPublic:
    """Create a registered model in `project` (left out: the X-Gallery-Project header, else the caller's
    one project, else `default`); needs the writer role there. 409 if the name is taken, in any project."""
    project = access.home(data.project)
    return store.create_model(data.model_copy(update={"project": project}))


@router.get("/models", summary="Search models")
def search_models(
    store: RegistryStoreDep,
    access: ProjectAccessDep,
    project: ProjectFilter = None,
    name: Annotated[str | None, Query(description="substring of the name, any case")] = None,
    owner: str | None = None,
    tag: Annotated[list[str], Query(description="KEY or KEY=VALUE; repeat for several")] = [],  # noqa: B006
    order_by: ModelOrder = ModelOrder.name,
    order: Direction = "asc",
    limit: Limit = 100,
    page_token: PageToken = None,
    offset: Offset = None,
) -> ModelPage:
    """Models matching every filter, one page at a time; pass `next_page_token` back for the next.
    Only models of the projects the caller holds a role in (or of `project`)."""
    query = ModelQuery(
        name_contains=name,
        owner=owner,
        projects=access.listed(project),
        tags=_parse_tags(tag),
        order_by=order_by,
        descending=order == "desc",
        limit=limit,
        offset=_offset(page_token, offset),
    )
    return store.search_models(query)


@router.get("/models/{name}", summary="Get a model")
def get_model(name: str, store: RegistryStoreDep, access: ProjectAccessDep) -> ModelPublic:
    return access.read(name, lambda: store.get_model(name))


@router.patch("/models/{name}", summary="Update a model")
def update_model(
    name: str,
    data: ModelUpdate,
    store: RegistryStoreDep,
    access: ProjectAccessDep,
    audit: AuditRecorderDep,
    reason: Reason = None,
) -> ModelPublic:
    """Change description, owner or tags (tags, when given, replace all tags)."""
    project = access.model(name, Role.writer)
    before = metadata_of(store.get_model(name))
    updated = store.update_model(name, data)
    audit.record_edit(
        AuditAction.metadata_change, name, before, metadata_of(updated), project=project, model=name, reason=reason
    )
    return updated


@router.delete("/models/{name}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a model", dependencies=ADMIN)
def delete_model(
    name: str, store: RegistryStoreDep, access: ProjectAccessDep, audit: AuditRecorderDep, reason: Reason = None
) -> Response:
    """Delete a model with every version, artifact record, alias and its policy."""
    project = access.model(name, Role.admin)
    before = store.get_model(name)
    store.delete_model(name)
    audit.record(
        AuditAction.deletion,
        name,
        model=name,
        before={"latest_version": before.latest_version, "aliases": before.aliases},
        reason=reason,
        project=project,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/models/{name}/validation-policy", summary="Get a model's validation policy")
def get_validation_policy(name: str, store: RegistryStoreDep, access: ProjectAccessDep) -> ValidationPolicy:
    """The gate's criteria for this model; the defaults (updated_at null) if none was set."""
    access.model(name, Role.reader)
    return store.get_validation_policy(name)


@router.put("/models/{name}/validation-policy", summary="Set a model's validation policy", dependencies=ADMIN)
def set_validation_policy(
    name: str,
    data: ValidationPolicyUpdate,
    store: RegistryStoreDep,
    access: ProjectAccessDep,
    audit: AuditRecorderDep,
    reason: Reason = None,
) -> ValidationPolicy:
    """Admin of the model's project only: the policy is the bar the gate holds every new version to."""
    project = access.model(name, Role.admin)
    before = store.get_validation_policy(name)
    policy = store.set_validation_policy(name, data)
    keep = set(ValidationPolicyUpdate.model_fields)
    audit.record(
        AuditAction.policy_change,
        f"{name}/validation-policy",
        model=name,
        before=before.model_dump(mode="json", include=keep) if before.updated_at is not None else None,
        after=policy.model_dump(mode="json", include=keep),
        reason=reason,
        project=project,
    )
    return policy


@router.post(
    "/models/{name}/versions",
    status_code=status.HTTP_201_CREATED,
    summary="Register a version",
    response_model=VersionPublic,
    responses={200: {"description": "the event was registered before; its version, unchanged"}},
)
def register_version(
    name: str, data: VersionCreate, store: RegistryStoreDep, access: ProjectAccessDep, audit: AuditRecorderDep
) -> Response:
    """Register the next version with its artifacts. The SemVer is the next minor (same signature)
    or major (new signature) unless given; an explicit one must be greater than the latest.

    `source_event_id` is refused: only the validation gate sets it, from the `model.trained` event
    it registers. Event ids are predictable (`trained:<job id>`), and the gate takes a version
    already registered under its event id as its own, so a version registered here under that id
    would be validated, and deployed, with artifacts the caller chose.
    """
    if data.source_event_id is not None:
        raise InvalidRequest(
            "source_event_id: set only by the validation gate from a model.trained event; leave it out"
        )
    # the role is checked in the model's project as the registration reads the model: no query more
    registered = store.register_version(name, data, authorize=lambda project: access.check(name, project, Role.writer))
    audit.record(
        AuditAction.registration,
        f"{name}/{registered.version}",
        model=name,
        version=registered.version,
        after={"version": registered.version, "semver": registered.semver, "status": registered.status},
        reason=data.description,
        project=registered.project,
    )
    return _json(registered, status.HTTP_201_CREATED)


@router.get("/models/{name}/versions", summary="List a model's versions")
def list_versions(
    name: str,
    store: RegistryStoreDep,
    access: ProjectAccessDep,
    status_: Annotated[VersionStatus | None, Query(alias="status")] = None,
    order_by: VersionOrder = VersionOrder.version,
    order: Direction = "desc",
    limit: Limit = 100,
    page_token: PageToken = None,
    offset: Offset = None,
) -> VersionPage:
    access.model(name, Role.reader)  # 404 for an unknown (or hidden) model rather than an empty page
    query = VersionQuery(
        name=name,
        status=status_,
        order_by=order_by,
        descending=order == "desc",
        limit=limit,
        offset=_offset(page_token, offset),
    )
    return store.search_versions(query)


@router.get("/models/{name}/versions/{version}", summary="Get a version", response_model=VersionPublic)
def get_version(name: str, version: int, store: RegistryStoreDep, access: ProjectAccessDep) -> Response:
    return _json(access.read(name, lambda: store.get_version(name, version)))


@router.patch("/models/{name}/versions/{version}", summary="Update a version")
def update_version(
    name: str,
    version: int,
    data: VersionUpdate,
    store: RegistryStoreDep,
    access: ProjectAccessDep,
    audit: AuditRecorderDep,
    reason: Reason = None,
) -> VersionPublic:
    """Change status (pending → validating → validated | rejected → archived), description or tags.

    A status change needs the admin role in the model's project: the validation gate sets status, and
    a writer moving a version to `validated` would pass it by the gate. Description and tags need a writer.
    """
    project = access.model(name, Role.writer)
    if data.status is not None:
        access.model(name, Role.admin, "changing a version's status")
    previous = store.get_version(name, version)
    updated = store.update_version(name, version, data)
    target = f"{name}/{version}"
    if previous.status != updated.status:
        audit.record(
            AuditAction.status_change,
            target,
            model=name,
            version=version,
            before={"status": previous.status},
            after={"status": updated.status},
            reason=reason,
            project=project,
        )
    audit.record_edit(
        AuditAction.metadata_change,
        target,
        metadata_of(previous),
        metadata_of(updated),
        project=project,
        model=name,
        version=version,
        reason=reason,
    )
    return updated


@router.delete(
    "/models/{name}/versions/{version}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a version",
    dependencies=ADMIN,
)
def delete_version(
    name: str,
    version: int,
    store: RegistryStoreDep,
    caller: CallerDep,
    access: ProjectAccessDep,
    audit: AuditRecorderDep,
    reason: Reason = None,
) -> Response:
    """Delete a version; aliases pointing at it are removed (and the removal recorded)."""
    project = access.model(name, Role.admin)
    before = store.get_version(name, version)
    store.delete_version(name, version, actor=caller.name)
    audit.record(
        AuditAction.deletion,
        f"{name}/{version}",
        model=name,
        version=version,
        before={"status": before.status, "semver": before.semver, "aliases": before.aliases},
        reason=reason,
        project=project,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.patch("/models/{name}/versions/{version}/tags", summary="Set or remove some tags of a version")
def merge_version_tags(
    name: str,
    version: int,
    store: RegistryStoreDep,
    access: ProjectAccessDep,
    cards: ModelCardsDep,
    audit: AuditRecorderDep,
    changes: Annotated[dict[str, str | None], Body(description="key -> value to set, or null to remove")],
    reason: Reason = None,
) -> VersionPublic:
    """Set the tags given (null removes one) and keep the others. A change of an `optimizer.*` tag
    (the recommendation the catalogue shows) regenerates the version's model card."""
    project = access.model(name, Role.writer)
    for key, value in changes.items():
        check_tag(key, value or "")
    before = metadata_of(store.get_version(name, version))
    updated = store.merge_version_tags(name, version, changes)
    audit.record_edit(
        AuditAction.metadata_change,
        f"{name}/{version}",
        before,
        metadata_of(updated),
        project=project,
        model=name,
        version=version,
        reason=reason,
    )
    if optimizer_changed(changes) and cards.refresh(name, updated) is not None:
        updated = store.get_version(name, version)
    return updated


@router.put("/models/{name}/versions/{version}/artifacts/{role}", summary="Attach an artifact")
def attach_artifact(
    name: str,
    version: int,
    role: ArtifactRole,
    ref: ArtifactRef,
    store: RegistryStoreDep,
    access: ProjectAccessDep,
    cards: ModelCardsDep,
    audit: AuditRecorderDep,
) -> ArtifactPublic:
    """Record an artifact; the same sha256 again is a no-op, another sha256 for the role is 409.
    The optimizer's report sets the version's `optimizer.*` tags (its recommended variant, size and
    latency) and regenerates the version's model card."""
    project = access.model(name, Role.writer)
    known = store.get_version(name, version).artifact(role) is not None
    attached = store.attach_artifact(name, version, role, ref)
    if not known:
        audit.record(
            AuditAction.artifact_attached,
            f"{name}/{version}/{role}",
            model=name,
            version=version,
            after={"role": str(role), "uri": attached.uri, "sha256": attached.sha256, "size": attached.size},
            project=project,
        )
    if role == ArtifactRole.report:
        cards.take_optimizer_report(name, version, ref)
    return attached


@router.get("/models/{name}/versions/{version}/lineage", summary="A version's lineage")
def get_lineage(name: str, version: int, store: RegistryStoreDep, access: ProjectAccessDep) -> LineagePublic:
    """The version and its parents, newest first, with training job, data set and config of each."""
    access.model(name, Role.reader)
    return store.lineage(name, version)


@router.get("/models/{name}/aliases", summary="List a model's aliases")
def list_aliases(name: str, store: RegistryStoreDep, access: ProjectAccessDep) -> list[AliasPublic]:
    access.model(name, Role.reader)
    return store.list_aliases(name)


@router.get("/models/{name}/aliases/{alias}", summary="Resolve name@alias", response_model=VersionPublic)
def resolve_alias(name: str, alias: str, store: RegistryStoreDep, access: ProjectAccessDep) -> Response:
    """The version `alias` points at, with its artifacts."""
    return _json(access.read(name, lambda: store.get_version_by_alias(name, alias)))


@router.put("/models/{name}/aliases/{alias}", summary="Point an alias at a version")
def set_alias(
    name: str,
    alias: str,
    data: AliasSet,
    store: RegistryStoreDep,
    settings: RegistrySettingsDep,
    caller: CallerDep,
    access: ProjectAccessDep,
    audit: AuditRecorderDep,
) -> AliasPublic:
    """Move (or create) an alias; protected aliases need the admin role in the model's project.
    Recorded in the history and the audit trail."""
    project = access.model(name, Role.writer)
    check_alias_permission(settings, caller, alias, project)
    before = store.get_model(name).aliases.get(alias)
    moved = store.set_alias(name, alias, data.version, actor=caller.name, reason=data.reason)
    if before != moved.version:
        audit.record(
            AuditAction.alias_move,
            f"{name}@{alias}",
            model=name,
            version=moved.version,
            alias=alias,
            before={"version": before},
            after={"version": moved.version},
            reason=data.reason,
            project=project,
        )
    return moved


@router.delete("/models/{name}/aliases/{alias}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete an alias")
def delete_alias(
    name: str,
    alias: str,
    store: RegistryStoreDep,
    settings: RegistrySettingsDep,
    caller: CallerDep,
    access: ProjectAccessDep,
    audit: AuditRecorderDep,
    reason: Reason = None,
) -> Response:
    project = access.model(name, Role.writer)
    check_alias_permission(settings, caller, alias, project)
    before = store.get_alias(name, alias).version
    store.delete_alias(name, alias, actor=caller.name, reason=reason)
    audit.record(
        AuditAction.alias_move,
        f"{name}@{alias}",
        model=name,
        version=before,
        alias=alias,
        before={"version": before},
        after={"version": None},
        reason=reason,
        project=project,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/models/{name}/aliases/{alias}/history", summary="An alias's history")
def alias_history(name: str, alias: str, store: RegistryStoreDep, access: ProjectAccessDep) -> list[AliasChange]:
    """Every move of the alias, newest first: who, from which version to which, when, why."""
    access.model(name, Role.reader)
    history = store.alias_history(name, alias)
    if not history:
        raise NotFound(f"model {name!r} has no alias {alias!r} and never had one")
    return history
