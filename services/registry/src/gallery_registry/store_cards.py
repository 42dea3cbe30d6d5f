"""A model's card text (description, intended use, limitations) with its history, and the one
artifact the registry itself replaces: the generated model card of a version."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from gallery_common.db import as_utc
from gallery_common.events import ArtifactRef

from . import views
from .schemas import ArtifactPublic, ArtifactRole, _Input
from .store_base import StoreBase
from .tables import ArtifactRow, ModelCardRevisionRow, RegisteredModelRow, utcnow

CARD_FIELDS = ("description", "intended_use", "limitations")


class CardUpdate(_Input):
    """Fields left out keep their text; null clears one. Markdown."""

    description: str | None = Field(default=None, max_length=10_000)
    intended_use: str | None = Field(default=None, max_length=20_000)
    limitations: str | None = Field(default=None, max_length=20_000)


class ModelCardText(BaseModel):
    """A model's card text at one revision (0: never edited; the description is the model's)."""

    name: str
    revision: int
    description: str | None
    intended_use: str | None
    limitations: str | None
    updated_at: datetime
    updated_by: str | None


def _latest(session: Session, model_id: int) -> ModelCardRevisionRow | None:
    return session.exec(
        select(ModelCardRevisionRow)
        .where(ModelCardRevisionRow.model_id == model_id)
        .order_by(col(ModelCardRevisionRow.revision).desc())
        .limit(1)
    ).first()


def _text(model: RegisteredModelRow, row: ModelCardRevisionRow | None) -> ModelCardText:
    if row is None:
        return ModelCardText(
            name=model.name,
            revision=0,
            description=model.description,
            intended_use=None,
            limitations=None,
            updated_at=as_utc(model.created_at),
            updated_by=None,
        )
    # the description is always the model's own: it stays in step however it was changed
    return ModelCardText(
        name=model.name,
        revision=row.revision,
        description=model.description,
        intended_use=row.intended_use,
        limitations=row.limitations,
        updated_at=as_utc(row.updated_at),
        updated_by=row.updated_by,
    )


def record_card_revision(
    session: Session, model: RegisteredModelRow, changes: dict[str, str | None], actor: str | None
) -> ModelCardRevisionRow | None:
    """Append a revision with `changes` over the card in force, and keep the model's description in
    step; None (nothing written) when nothing changes."""
    latest = _latest(session, views.pk(model.id))
    current = {
        "description": model.description,
        "intended_use": latest.intended_use if latest else None,
        "limitations": latest.limitations if latest else None,
    }
    merged = {**current, **{k: v for k, v in changes.items() if k in CARD_FIELDS}}
    if merged == current:
        return None
    now = utcnow()
    row = ModelCardRevisionRow(
        model_id=views.pk(model.id),
        revision=(latest.revision if latest else 0) + 1,
        description=merged["description"],
        intended_use=merged["intended_use"],
        limitations=merged["limitations"],
        updated_by=actor,
        updated_at=now,
    )
    session.add(row)
    model.description = merged["description"]
    model.updated_at = now
    session.add(model)
    session.flush()
    return row


class CardOps(StoreBase):
    """The card half of `RegistryStore`."""

    def get_card(self, name: str) -> ModelCardText:
        with self._read() as session:
            model = views.model_row(session, name)
            return _text(model, _latest(session, views.pk(model.id)))

    def set_card(self, name: str, data: CardUpdate, *, actor: str | None = None) -> ModelCardText:
        """A new revision with the fields `data` sets; the card unchanged if they change nothing."""
        changes = {k: getattr(data, k) for k in CARD_FIELDS if k in data.model_fields_set}
        with self._write() as session:
            model = views.model_row(session, name)
            record_card_revision(session, model, changes, actor)
            return _text(model, _latest(session, views.pk(model.id)))

    def card_history(self, name: str) -> list[ModelCardText]:
        """Every revision, newest first."""
        with self._read() as session:
            model = views.model_row(session, name)
            rows = session.exec(
                select(ModelCardRevisionRow)
                .where(ModelCardRevisionRow.model_id == model.id)
                .order_by(col(ModelCardRevisionRow.revision).desc())
            ).all()
            return [
                ModelCardText(
                    name=model.name,
                    revision=row.revision,
                    description=row.description,
                    intended_use=row.intended_use,
                    limitations=row.limitations,
                    updated_at=as_utc(row.updated_at),
                    updated_by=row.updated_by,
                )
                for row in rows
            ]

    def versions_with_artifact(self, name: str, role: ArtifactRole) -> list[int]:
        """Numbers of the model's versions that hold a `role` artifact."""
        with self._read() as session:
            model = views.model_row(session, name)
            found = session.connection().execute(
                sa.select(views.VERSION.c.version)
                .join(views.ARTIFACT, views.ARTIFACT.c.version_id == views.VERSION.c.id)
                .where(views.VERSION.c.model_id == model.id, views.ARTIFACT.c.role == role.value)
                .order_by(views.VERSION.c.version)
            )
            return [row.version for row in found]

    def replace_artifact(self, name: str, version: int, role: ArtifactRole, ref: ArtifactRef) -> ArtifactPublic:
        """Record `ref` as the `role` artifact, replacing what was there: only for what the registry
        derives itself (the generated model card); every other artifact is immutable."""
        with self._write() as session:
            row = views.version_row(session, views.model_row(session, name), version)
            existing = session.exec(
                select(ArtifactRow).where(ArtifactRow.version_id == row.id, ArtifactRow.role == role.value)
            ).first()
            if existing is None:
                existing = ArtifactRow(version_id=views.pk(row.id), role=role.value, uri=ref.uri, sha256=ref.sha256)
            elif existing.sha256 == ref.sha256:
                return views.artifact_public(existing)
            existing.uri, existing.sha256, existing.size, existing.format = ref.uri, ref.sha256, ref.size, ref.format
            existing.created_at = utcnow()
            session.add(existing)
            session.flush()
            return views.artifact_public(existing)
