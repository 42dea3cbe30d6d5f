"""Versions of a model once registered: status, tags, search, lineage and artifacts."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select

from gallery_common.errors import Conflict, NotFound
from gallery_common.events import ArtifactRef

from . import paging, views
from .schemas import (
    ArtifactPublic,
    ArtifactRole,
    LineagePublic,
    LineageStep,
    VersionOrder,
    VersionPage,
    VersionPublic,
    VersionQuery,
    VersionStatus,
    VersionUpdate,
    check_tag,
)
from .store_base import StoreBase
from .tables import (
    AliasHistoryRow,
    AliasRow,
    ArtifactRow,
    ModelVersionRow,
    RegisteredModelRow,
    VersionTagRow,
    utcnow,
)

# Where a version may go next; setting the status it already has is a no-op.
TRANSITIONS: dict[VersionStatus, frozenset[VersionStatus]] = {
    VersionStatus.pending: frozenset({VersionStatus.validating, VersionStatus.archived}),
    VersionStatus.validating: frozenset({VersionStatus.validated, VersionStatus.rejected}),
    # validated/rejected may be validated again (a degraded model, a changed policy)
    VersionStatus.validated: frozenset({VersionStatus.archived, VersionStatus.validating}),
    VersionStatus.rejected: frozenset({VersionStatus.archived, VersionStatus.validating}),
    VersionStatus.archived: frozenset(),
}


class VersionOps(StoreBase):
    """The version half of `RegistryStore`."""

    def get_version(self, name: str, version: int) -> VersionPublic:
        with self._read() as session:
            return views.find_version(session, name, version)

    def find_version_by_event(self, source_event_id: str) -> VersionPublic | None:
        """The version a model.trained event registered, if it was."""
        with self._read() as session:
            row = session.exec(
                select(ModelVersionRow).where(ModelVersionRow.source_event_id == source_event_id)
            ).first()
            return views.version_public(session, row) if row else None

    def latest_version(self, name: str) -> VersionPublic:
        """The highest-numbered version; NotFound if the model has none."""
        with self._read() as session:
            model = views.model_row(session, name)
            row = session.exec(
                select(ModelVersionRow)
                .where(ModelVersionRow.model_id == model.id)
                .order_by(col(ModelVersionRow.version).desc())
                .limit(1)
            ).first()
            if row is None:
                raise NotFound(f"model {name!r} has no versions")
            return views.version_public(session, row)

    def update_version(self, name: str, version: int, data: VersionUpdate) -> VersionPublic:
        """Change status (along TRANSITIONS), description or tags (replacing all tags)."""
        with self._write() as session:
            row = views.version_row(session, views.model_row(session, name), version)
            if data.status is not None:
                _move(row, name, data.status)
            if "description" in data.model_fields_set:
                row.description = data.description
            if data.tags is not None:
                session.exec(sa.delete(VersionTagRow).where(col(VersionTagRow.version_id) == row.id))  # type: ignore[call-overload]
                session.add_all(
                    VersionTagRow(version_id=views.pk(row.id), key=k, value=v) for k, v in data.tags.items()
                )
            row.updated_at = utcnow()
            session.add(row)
            session.flush()
            return views.version_public(session, row)

    def merge_version_tags(self, name: str, version: int, changes: dict[str, str | None]) -> VersionPublic:
        """Set (or, with None, remove) some tags of a version and keep the others."""
        with self._write() as session:
            row = views.version_row(session, views.model_row(session, name), version)
            keys = list(changes)
            session.exec(
                sa.delete(VersionTagRow).where(  # type: ignore[call-overload]
                    col(VersionTagRow.version_id) == row.id, col(VersionTagRow.key).in_(keys)
                )
            )
            session.add_all(
                VersionTagRow(version_id=views.pk(row.id), key=k, value=v) for k, v in changes.items() if v is not None
            )
            row.updated_at = utcnow()
            session.add(row)
            session.flush()
            return views.version_public(session, row)

    def set_version_status(
        self,
        name: str,
        version: int,
        status: VersionStatus,
        *,
        evaluation_report: dict[str, Any] | None = None,
        rejection_reasons: list[str] | None = None,
        metrics: dict[str, float] | None = None,
    ) -> VersionPublic:
        """Move a version along TRANSITIONS, recording what the gate found.

        `evaluation_report` and `rejection_reasons` replace what was recorded before, `metrics`
        are merged into the version's metrics. Conflict if the move is not allowed.
        """
        with self._write() as session:
            row = views.version_row(session, views.model_row(session, name), version)
            _move(row, name, status)
            if evaluation_report is not None:
                row.evaluation_report = evaluation_report
            if rejection_reasons is not None:
                row.rejection_reasons = list(rejection_reasons)
            if metrics:
                row.metrics = {**(row.metrics or {}), **metrics}
            row.updated_at = utcnow()
            session.add(row)
            session.flush()
            return views.version_public(session, row)

    def delete_version(self, name: str, version: int, *, actor: str = "registry") -> None:
        """Delete a version; aliases on it are removed and the removal recorded in their history."""
        with self._write() as session:
            model = views.model_row(session, name)
            row = views.version_row(session, model, version)
            for alias in session.exec(select(AliasRow).where(AliasRow.version_id == row.id)):
                session.add(
                    AliasHistoryRow(
                        model_id=model.id,  # type: ignore[arg-type]
                        alias=alias.alias,
                        from_version=version,
                        to_version=None,
                        actor=actor,
                        reason=f"version {version} deleted",
                    )
                )
            session.delete(row)
            model.updated_at = utcnow()
            session.add(model)

    def set_version_tag(self, name: str, version: int, key: str, value: str) -> None:
        check_tag(key, value)
        with self._write() as session:
            row = views.version_row(session, views.model_row(session, name), version)
            session.merge(VersionTagRow(version_id=views.pk(row.id), key=key, value=value))  # type: ignore[arg-type]
            row.updated_at = utcnow()
            session.add(row)

    def delete_version_tag(self, name: str, version: int, key: str) -> None:
        """Remove a tag; NotFound if the version has no such tag."""
        with self._write() as session:
            row = views.version_row(session, views.model_row(session, name), version)
            tag = session.get(VersionTagRow, (row.id, key))
            if tag is None:
                raise NotFound(f"version {version} of model {name!r} has no tag {key!r}")
            session.delete(tag)

    def search_versions(self, query: VersionQuery) -> VersionPage:
        """Versions matching every filter of `query`, ordered by model name then `order_by`."""
        with self._read() as session:
            dialect = session.get_bind().dialect.name
            name = views.MODEL.c.name
            stmt = select(ModelVersionRow).join(
                RegisteredModelRow, col(RegisteredModelRow.id) == ModelVersionRow.model_id
            )
            if query.name is not None:
                stmt = stmt.where(name == query.name)
            if query.name_like is not None:
                stmt = stmt.where(paging.like(name, query.name_like, dialect))
            if query.projects is not None:
                stmt = stmt.where(views.MODEL.c.project.in_(query.projects))
            if query.version is not None:
                stmt = stmt.where(ModelVersionRow.version == query.version)
            if query.run_id is not None:
                stmt = stmt.where(ModelVersionRow.run_id == query.run_id)
            if query.source is not None:
                stmt = stmt.where(ModelVersionRow.source == query.source)
            if query.status is not None:
                stmt = stmt.where(ModelVersionRow.status == query.status.value)
            for key, value in query.tags.items():
                tag = select(VersionTagRow.version_id).where(
                    VersionTagRow.version_id == ModelVersionRow.id, VersionTagRow.key == key
                )
                if value is not None:
                    tag = tag.where(VersionTagRow.value == value)
                stmt = stmt.where(tag.exists())
            for key, value in query.tags_not.items():
                stmt = stmt.where(
                    ~select(VersionTagRow.version_id)
                    .where(
                        VersionTagRow.version_id == ModelVersionRow.id,
                        VersionTagRow.key == key,
                        VersionTagRow.value == value,
                    )
                    .exists()
                )
            key_column = {
                VersionOrder.version: col(ModelVersionRow.version),
                VersionOrder.created: col(ModelVersionRow.created_at),
                VersionOrder.updated: col(ModelVersionRow.updated_at),
            }[query.order_by]
            by_key = [key_column, col(ModelVersionRow.id)]
            stmt = stmt.order_by(name, *(c.desc() if query.descending else c.asc() for c in by_key))
            rows = session.exec(stmt.offset(query.offset).limit(query.limit + 1)).all()
            return VersionPage(
                versions=views.versions_public(session, rows[: query.limit]),
                next_page_token=paging.next_token(query.offset, query.limit, len(rows)),
            )

    def lineage(self, name: str, version: int) -> LineagePublic:
        """The version and its chain of parents, newest first."""
        with self._read() as session:
            model = views.model_row(session, name)
            rows = {
                r.version: r for r in session.exec(select(ModelVersionRow).where(ModelVersionRow.model_id == model.id))
            }
            if version not in rows:
                raise NotFound(f"model {name!r} has no version {version}")
            chain: list[LineageStep] = []
            current: int | None = version
            while current is not None and current in rows:
                row = rows[current]
                chain.append(
                    LineageStep(
                        version=row.version,
                        semver=row.semver,
                        run_id=row.run_id,
                        training_job_id=row.training_job_id,
                        dataset_fingerprint=row.dataset_fingerprint,
                        config_hash=row.config_hash,
                        parent_version=row.parent_version,
                        federation=views.federation_of(row),
                    )
                )
                # parents are always older, so the walk ends
                current = row.parent_version if row.parent_version and row.parent_version < row.version else None
            return LineagePublic(name=name, version=version, chain=chain, missing_parent=current)

    # artifacts

    def attach_artifact(self, name: str, version: int, role: ArtifactRole, ref: ArtifactRef) -> ArtifactPublic:
        """Record an artifact of a version. The same role with the same sha256 again is a no-op;
        with another sha256 it is a Conflict (artifacts are immutable)."""
        try:
            with self._write() as session:
                row = views.version_row(session, views.model_row(session, name), version)
                existing = session.exec(
                    select(ArtifactRow).where(ArtifactRow.version_id == row.id, ArtifactRow.role == role.value)
                ).first()
                if existing is not None:
                    return _same_artifact(existing, name, version, ref)
                artifact = _artifact_row(views.pk(row.id), role, ref)
                session.add(artifact)
                row.updated_at = utcnow()
                session.add(row)
                session.flush()
                return views.artifact_public(artifact)
        except sa.exc.IntegrityError:
            # a concurrent attach of the same role won; judge ours against it
            with self._read() as session:
                row = views.version_row(session, views.model_row(session, name), version)
                existing = session.exec(
                    select(ArtifactRow).where(ArtifactRow.version_id == row.id, ArtifactRow.role == role.value)
                ).one()
                return _same_artifact(existing, name, version, ref)


def _move(row: ModelVersionRow, name: str, status: VersionStatus) -> None:
    current = VersionStatus(row.status)
    if status == current:
        return
    allowed = TRANSITIONS[current]
    if status not in allowed:
        options = ", ".join(sorted(allowed)) or "nothing (archived is final)"
        raise Conflict(
            f"version {row.version} of model {name!r} cannot go from {current} to {status}; "
            f"from {current} it may go to {options}"
        )
    row.status = status.value


def _artifact_row(version_id: int, role: ArtifactRole, ref: ArtifactRef) -> ArtifactRow:
    return ArtifactRow(
        version_id=version_id,
        role=ArtifactRole(role).value,
        uri=ref.uri,
        sha256=ref.sha256,
        size=ref.size,
        format=ref.format,
    )


def _same_artifact(existing: ArtifactRow, name: str, version: int, ref: ArtifactRef) -> ArtifactPublic:
    if existing.sha256 != ref.sha256:
        raise Conflict(
            f"version {version} of model {name!r} already has a {existing.role} artifact with sha256 "
            f"{existing.sha256}; artifacts are immutable, register a new version instead"
        )
    return views.artifact_public(existing)
