"""Reading rows and turning them into public models, a page at a time (no query per row)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from gallery_common.contracts.refs import FederatedLineage
from gallery_common.db import as_utc
from gallery_common.errors import NotFound
from gallery_common.events import Lineage, Signature

from .schemas import ArtifactPublic, ArtifactRole, ModelPublic, VersionPublic, VersionStatus
from .tables import (
    AliasRow,
    ArtifactRow,
    ModelTagRow,
    ModelVersionRow,
    RegisteredModelRow,
    VersionTagRow,
)

VERSION: sa.Table = ModelVersionRow.__table__  # type: ignore[attr-defined]
MODEL: sa.Table = RegisteredModelRow.__table__  # type: ignore[attr-defined]
ARTIFACT: sa.Table = ArtifactRow.__table__  # type: ignore[attr-defined]
VERSION_TAG: sa.Table = VersionTagRow.__table__  # type: ignore[attr-defined]
ALIAS: sa.Table = AliasRow.__table__  # type: ignore[attr-defined]

# A model_version row, as an ORM object or a Core row: both read by column name.
VersionRow = ModelVersionRow | sa.Row[Any]

_IDS: sa.BindParameter[list[int]] = sa.bindparam("ids", expanding=True)
_ARTIFACTS_OF = sa.select(
    ARTIFACT.c.version_id,
    ARTIFACT.c.role,
    ARTIFACT.c.uri,
    ARTIFACT.c.sha256,
    ARTIFACT.c.size,
    ARTIFACT.c.format,
    ARTIFACT.c.created_at,
).where(ARTIFACT.c.version_id.in_(_IDS))
_TAGS_OF = sa.select(VERSION_TAG.c.version_id, VERSION_TAG.c.key, VERSION_TAG.c.value).where(
    VERSION_TAG.c.version_id.in_(_IDS)
)
_ALIASES_OF = sa.select(ALIAS.c.version_id, ALIAS.c.alias).where(ALIAS.c.version_id.in_(_IDS)).order_by(ALIAS.c.alias)
_VERSION_BY_NUMBER = (
    sa.select(VERSION, MODEL.c.project.label("model_project"))
    .join(MODEL, MODEL.c.id == VERSION.c.model_id)
    .where(MODEL.c.name == sa.bindparam("name"), VERSION.c.version == sa.bindparam("version"))
)
_VERSION_BY_ALIAS = (
    sa.select(VERSION, MODEL.c.project.label("model_project"))
    .join(ALIAS, ALIAS.c.version_id == VERSION.c.id)
    .join(MODEL, MODEL.c.id == ALIAS.c.model_id)
    .where(MODEL.c.name == sa.bindparam("name"), ALIAS.c.alias == sa.bindparam("alias"))
)


def pk(value: int | None) -> int:
    """A row's primary key, which exists once the row is flushed or loaded."""
    if value is None:
        raise RuntimeError("row has no primary key yet: flush it first")
    return value


def model_row(session: Session, name: str) -> RegisteredModelRow:
    row = session.exec(select(RegisteredModelRow).where(RegisteredModelRow.name == name)).first()
    if row is None:
        raise NotFound(f"model {name!r} not found")
    return row


def version_row(session: Session, model: RegisteredModelRow, version: int) -> ModelVersionRow:
    row = session.exec(
        select(ModelVersionRow).where(ModelVersionRow.model_id == model.id, ModelVersionRow.version == version)
    ).first()
    if row is None:
        raise NotFound(f"model {model.name!r} has no version {version}")
    return row


def models_public(session: Session, rows: Sequence[RegisteredModelRow]) -> list[ModelPublic]:
    ids = [row.id for row in rows]
    if not ids:
        return []
    tags: dict[int, dict[str, str]] = defaultdict(dict)
    for tag in session.exec(select(ModelTagRow).where(col(ModelTagRow.model_id).in_(ids))):
        tags[tag.model_id][tag.key] = tag.value
    aliases: dict[int, dict[str, int]] = defaultdict(dict)
    alias_rows = session.exec(
        select(AliasRow.model_id, AliasRow.alias, ModelVersionRow.version)
        .join(ModelVersionRow, col(ModelVersionRow.id) == AliasRow.version_id)
        .where(col(AliasRow.model_id).in_(ids))
    )
    for model_id, alias, version in alias_rows:
        aliases[model_id][alias] = version
    latest = dict(
        session.exec(  # type: ignore[call-overload]
            select(ModelVersionRow.model_id, sa.func.max(ModelVersionRow.version))
            .where(col(ModelVersionRow.model_id).in_(ids))
            .group_by(col(ModelVersionRow.model_id))
        ).all()
    )
    return [
        ModelPublic(
            name=row.name,
            description=row.description,
            owner=row.owner,
            tags=dict(sorted(tags[row.id].items())),  # type: ignore[index]
            created_at=as_utc(row.created_at),
            updated_at=as_utc(row.updated_at),
            latest_version=latest.get(pk(row.id)),
            aliases=dict(sorted(aliases[row.id].items())),  # type: ignore[index]
            project=row.project,
        )
        for row in rows
    ]


def federation_of(row: VersionRow) -> FederatedLineage | None:
    """A federated version's stored lineage.federation; None for a version trained in one place."""
    return FederatedLineage.model_validate(row.federation) if row.federation else None


def versions_public(
    session: Session, rows: Sequence[VersionRow], models: Mapping[int, tuple[str, str]] | None = None
) -> list[VersionPublic]:
    """Public versions of `rows` (ORM or Core rows of model_version); `models` (model id -> its name
    and project) saves a query when the caller knows them."""
    ids = [row.id for row in rows]
    if not ids:
        return []
    if models is None:
        model_ids = list({row.model_id for row in rows})
        found = session.connection().execute(
            sa.select(MODEL.c.id, MODEL.c.name, MODEL.c.project).where(MODEL.c.id.in_(model_ids))
        )
        models = {model_id: (name, project) for model_id, name, project in found}
    # Prebuilt Core statements, not ORM queries: these run on every read of a version
    conn = session.connection()
    params = {"ids": ids}
    artifacts: dict[int, dict[ArtifactRole, ArtifactPublic]] = defaultdict(dict)
    for art in conn.execute(_ARTIFACTS_OF, params):
        role = ArtifactRole(art.role)
        artifacts[art.version_id][role] = ArtifactPublic(
            role=role,
            uri=art.uri,
            sha256=art.sha256,
            size=art.size,
            format=art.format,
            created_at=as_utc(art.created_at),
        )
    tags: dict[int, dict[str, str]] = defaultdict(dict)
    for t in conn.execute(_TAGS_OF, params):
        tags[t.version_id][t.key] = t.value
    aliases: dict[int, list[str]] = defaultdict(list)
    for pointer in conn.execute(_ALIASES_OF, params):
        aliases[pointer.version_id].append(pointer.alias)
    return [
        VersionPublic(
            name=models[row.model_id][0],
            project=models[row.model_id][1],
            version=row.version,
            semver=row.semver,
            status=VersionStatus(row.status),
            description=row.description,
            signature=Signature.model_validate(row.signature) if row.signature else None,
            metrics=row.metrics or {},
            tags=dict(sorted(tags[row.id].items())),  # type: ignore[index]
            lineage=Lineage(
                training_job_id=row.training_job_id,
                dataset_fingerprint=row.dataset_fingerprint,
                config_hash=row.config_hash,
                parent_version=row.parent_version,
                federation=federation_of(row),
            ),
            run_id=row.run_id,
            source_event_id=row.source_event_id,
            source=row.source,
            task=row.task,
            class_names=row.class_names,
            evaluation_report=row.evaluation_report,
            rejection_reasons=row.rejection_reasons,
            artifacts=dict(sorted(artifacts[row.id].items())),  # type: ignore[index]
            aliases=aliases[row.id],  # type: ignore[index]
            created_at=as_utc(row.created_at),
            updated_at=as_utc(row.updated_at),
        )
        for row in rows
    ]


def version_public(session: Session, row: VersionRow, model: tuple[str, str] | None = None) -> VersionPublic:
    """`model`: the version's model's name and project, when the caller knows them."""
    return versions_public(session, [row], None if model is None else {row.model_id: model})[0]


def artifact_public(row: ArtifactRow) -> ArtifactPublic:
    return ArtifactPublic(
        role=ArtifactRole(row.role),
        uri=row.uri,
        sha256=row.sha256,
        size=row.size,
        format=row.format,
        created_at=as_utc(row.created_at),
    )


def find_version(session: Session, name: str, version: int) -> VersionPublic:
    """Version `version` of model `name`; NotFound names what is missing."""
    row = session.connection().execute(_VERSION_BY_NUMBER, {"name": name, "version": version}).first()
    if row is None:
        version_row(session, model_row(session, name), version)  # raises the right NotFound
    return version_public(session, row, (name, row.model_project))  # type: ignore[arg-type,union-attr]


def find_version_by_alias(session: Session, name: str, alias: str) -> VersionPublic:
    """The version `name@alias` points at; NotFound for an unknown model or alias."""
    row = session.connection().execute(_VERSION_BY_ALIAS, {"name": name, "alias": alias}).first()
    if row is None:
        model_row(session, name)  # NotFound for the model first
        raise NotFound(f"model {name!r} has no alias {alias!r}")
    return version_public(session, row, (name, row.model_project))
