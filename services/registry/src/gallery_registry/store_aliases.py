"""Aliases (`production`, `staging`, ...) and their append-only history."""

from __future__ import annotations

import re

from sqlmodel import Session, col, select

from gallery_common.db import as_utc
from gallery_common.errors import InvalidRequest, NotFound

from . import views
from .schemas import ALIAS_PATTERN, AliasChange, AliasPublic, VersionPublic
from .store_base import StoreBase
from .tables import AliasHistoryRow, AliasRow, ModelVersionRow, RegisteredModelRow, utcnow


def check_alias_name(alias: str) -> None:
    """Raise InvalidRequest unless `alias` is a usable alias name."""
    if not re.fullmatch(ALIAS_PATTERN, alias):
        raise InvalidRequest(
            f"alias {alias!r} is invalid: it must start with a letter and hold at most 64 letters, digits, '_' or '-'"
        )
    if alias.lower() == "latest":
        raise InvalidRequest("alias 'latest' is reserved: models:/NAME@latest means the newest version")


class AliasOps(StoreBase):
    """The alias half of `RegistryStore`."""

    def set_alias(self, name: str, alias: str, version: int, *, actor: str, reason: str | None = None) -> AliasPublic:
        """Point `alias` at `version`, appending the move to the alias's history (no-op if it already does)."""
        check_alias_name(alias)
        with self._write() as session:
            model = views.model_row(session, name)
            target = views.version_row(session, model, version)
            row = session.exec(select(AliasRow).where(AliasRow.model_id == model.id, AliasRow.alias == alias)).first()
            previous: int | None = None
            if row is not None:
                if row.version_id == target.id:
                    return _alias_public(name, row, version)
                previous = session.exec(
                    select(ModelVersionRow.version).where(ModelVersionRow.id == row.version_id)
                ).one()
            else:
                row = AliasRow(model_id=model.id, alias=alias, version_id=target.id)  # type: ignore[arg-type]
            row.version_id = target.id  # type: ignore[assignment]
            row.updated_at = utcnow()
            row.updated_by = actor
            session.add(row)
            session.add(
                AliasHistoryRow(
                    model_id=model.id,  # type: ignore[arg-type]
                    alias=alias,
                    from_version=previous,
                    to_version=version,
                    actor=actor,
                    reason=reason,
                    at=row.updated_at,
                )
            )
            session.flush()
            return _alias_public(name, row, version)

    def delete_alias(self, name: str, alias: str, *, actor: str, reason: str | None = None) -> None:
        """Remove an alias, recording it in the history; NotFound if there is no such alias."""
        with self._write() as session:
            model = views.model_row(session, name)
            row, version = _alias_row(session, model, alias)
            session.add(
                AliasHistoryRow(
                    model_id=model.id,  # type: ignore[arg-type]
                    alias=alias,
                    from_version=version,
                    to_version=None,
                    actor=actor,
                    reason=reason,
                )
            )
            session.delete(row)

    def get_alias(self, name: str, alias: str) -> AliasPublic:
        with self._read() as session:
            row, version = _alias_row(session, views.model_row(session, name), alias)
            return _alias_public(name, row, version)

    def list_aliases(self, name: str) -> list[AliasPublic]:
        with self._read() as session:
            model = views.model_row(session, name)
            rows = session.exec(
                select(AliasRow, ModelVersionRow.version)
                .join(ModelVersionRow, col(ModelVersionRow.id) == AliasRow.version_id)
                .where(AliasRow.model_id == model.id)
                .order_by(AliasRow.alias)
            ).all()
            return [_alias_public(name, row, version) for row, version in rows]

    def get_version_by_alias(self, name: str, alias: str) -> VersionPublic:
        """Resolve `name@alias`; NotFound if the model or the alias does not exist."""
        with self._read() as session:
            return views.find_version_by_alias(session, name, alias)

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasChange]:
        """Every move of the model's aliases (or of one alias), newest first."""
        with self._read() as session:
            model = views.model_row(session, name)
            query = select(AliasHistoryRow).where(AliasHistoryRow.model_id == model.id)
            if alias is not None:
                query = query.where(AliasHistoryRow.alias == alias)
            rows = session.exec(query.order_by(col(AliasHistoryRow.id).desc())).all()
            return [
                AliasChange(
                    alias=r.alias,
                    from_version=r.from_version,
                    to_version=r.to_version,
                    actor=r.actor,
                    reason=r.reason,
                    at=as_utc(r.at),
                )
                for r in rows
            ]


def _alias_row(session: Session, model: RegisteredModelRow, alias: str) -> tuple[AliasRow, int]:
    found = session.exec(
        select(AliasRow, ModelVersionRow.version)
        .join(ModelVersionRow, col(ModelVersionRow.id) == AliasRow.version_id)
        .where(AliasRow.model_id == model.id, AliasRow.alias == alias)
    ).first()
    if found is None:
        raise NotFound(f"model {model.name!r} has no alias {alias!r}")
    return found[0], found[1]


def _alias_public(name: str, row: AliasRow, version: int) -> AliasPublic:
    return AliasPublic(
        name=name, alias=row.alias, version=version, updated_at=as_utc(row.updated_at), updated_by=row.updated_by
    )
