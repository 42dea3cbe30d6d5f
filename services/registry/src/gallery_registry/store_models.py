"""Models, their tags and their validation policies."""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import col, select

from gallery_common.db import as_utc
from gallery_common.errors import Conflict, NotFound
from gallery_common.projects import DEFAULT_PROJECT

from . import paging, views
from .schemas import (
    ModelCreate,
    ModelOrder,
    ModelPage,
    ModelPublic,
    ModelQuery,
    ModelUpdate,
    ValidationPolicy,
    ValidationPolicyUpdate,
    check_tag,
)
from .store_base import StoreBase
from .store_cards import record_card_revision
from .tables import ModelTagRow, ModelVersionRow, RegisteredModelRow, ValidationPolicyRow, utcnow

_PROJECT_OF = sa.select(views.MODEL.c.project).where(views.MODEL.c.name == sa.bindparam("name"))


class ModelOps(StoreBase):
    """The model half of `RegistryStore`."""

    def create_model(self, data: ModelCreate) -> ModelPublic:
        """Create a model; Conflict if the name is taken."""
        try:
            with self._write() as session:
                if session.exec(select(RegisteredModelRow.id).where(RegisteredModelRow.name == data.name)).first():
                    raise Conflict(f"model {data.name!r} already exists")
                row = RegisteredModelRow(
                    name=data.name,
                    description=data.description,
                    owner=data.owner,
                    project=data.project or DEFAULT_PROJECT,
                )
                session.add(row)
                session.flush()
                session.add_all(ModelTagRow(model_id=views.pk(row.id), key=k, value=v) for k, v in data.tags.items())
                session.flush()
                return views.models_public(session, [row])[0]
        except sa.exc.IntegrityError:
            raise Conflict(f"model {data.name!r} already exists") from None

    def model_project(self, name: str) -> str:
        """The project model `name` belongs to; NotFound if there is no such model."""
        with self._read() as session:
            project = session.connection().execute(_PROJECT_OF, {"name": name}).scalar()
        if project is None:
            raise NotFound(f"model {name!r} not found")
        return str(project)

    def get_model(self, name: str) -> ModelPublic:
        with self._read() as session:
            return views.models_public(session, [views.model_row(session, name)])[0]

    def update_model(self, name: str, data: ModelUpdate) -> ModelPublic:
        """Change the fields `data` sets; tags, when given, replace all tags."""
        with self._write() as session:
            row = views.model_row(session, name)
            fields = data.model_fields_set
            if "description" in fields and data.description != row.description:
                # the card's description is the model's: a change here is a revision of the card too
                record_card_revision(session, row, {"description": data.description}, None)
            if "owner" in fields:
                row.owner = data.owner
            if data.tags is not None:
                session.exec(sa.delete(ModelTagRow).where(col(ModelTagRow.model_id) == row.id))  # type: ignore[call-overload]
                session.add_all(ModelTagRow(model_id=views.pk(row.id), key=k, value=v) for k, v in data.tags.items())
            row.updated_at = utcnow()
            session.add(row)
            session.flush()
            return views.models_public(session, [row])[0]

    def delete_model(self, name: str) -> None:
        """Delete a model with its versions, artifacts records, aliases, history and policy."""
        with self._write() as session:
            session.delete(views.model_row(session, name))

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        check_tag(key, value)
        with self._write() as session:
            row = views.model_row(session, name)
            session.merge(ModelTagRow(model_id=views.pk(row.id), key=key, value=value))  # type: ignore[arg-type]
            row.updated_at = utcnow()
            session.add(row)

    def delete_model_tag(self, name: str, key: str) -> None:
        """Remove a tag; NotFound if the model has no such tag."""
        with self._write() as session:
            row = views.model_row(session, name)
            tag = session.get(ModelTagRow, (row.id, key))
            if tag is None:
                raise NotFound(f"model {name!r} has no tag {key!r}")
            session.delete(tag)
            row.updated_at = utcnow()
            session.add(row)

    def get_validation_policy(self, name: str) -> ValidationPolicy:
        """The model's policy, or (with `updated_at` null) the defaults for the task of its latest version."""
        with self._read() as session:
            model = views.model_row(session, name)
            row = session.get(ValidationPolicyRow, model.id)
            if row is None:
                latest = (
                    select(ModelVersionRow.task)
                    .where(col(ModelVersionRow.model_id) == model.id)
                    .order_by(col(ModelVersionRow.version).desc())
                    .limit(1)
                )
                return ValidationPolicy.defaults_for(session.exec(latest).first())
            return ValidationPolicy.model_validate({**row.model_dump(), "updated_at": as_utc(row.updated_at)})

    def set_validation_policy(self, name: str, data: ValidationPolicyUpdate) -> ValidationPolicy:
        """Replace the model's policy (fields left out take their defaults)."""
        with self._write() as session:
            model = views.model_row(session, name)
            row = ValidationPolicyRow(model_id=model.id, updated_at=utcnow(), **data.model_dump())  # type: ignore[arg-type]
            row = session.merge(row)
            session.flush()
            return ValidationPolicy.model_validate({**row.model_dump(), "updated_at": as_utc(row.updated_at)})

    def search_models(self, query: ModelQuery) -> ModelPage:
        """Models matching every filter of `query`, in its order, one page at a time."""
        with self._read() as session:
            dialect = session.get_bind().dialect.name
            name = views.MODEL.c.name
            stmt = select(RegisteredModelRow)
            if query.name_contains:
                stmt = stmt.where(paging.contains(name, query.name_contains))
            if query.name_like is not None:
                stmt = stmt.where(paging.like(name, query.name_like, dialect))
            if query.name_ilike is not None:
                stmt = stmt.where(paging.ilike(name, query.name_ilike))
            if query.name_equals is not None:
                stmt = stmt.where(name == query.name_equals)
            if query.owner is not None:
                stmt = stmt.where(RegisteredModelRow.owner == query.owner)
            if query.projects is not None:
                stmt = stmt.where(col(RegisteredModelRow.project).in_(query.projects))
            for key, value in query.tags.items():
                tag = select(ModelTagRow.model_id).where(
                    ModelTagRow.model_id == RegisteredModelRow.id, ModelTagRow.key == key
                )
                if value is not None:
                    tag = tag.where(ModelTagRow.value == value)
                stmt = stmt.where(tag.exists())
            for key, value in query.tags_not.items():
                stmt = stmt.where(
                    ~select(ModelTagRow.model_id)
                    .where(
                        ModelTagRow.model_id == RegisteredModelRow.id,
                        ModelTagRow.key == key,
                        ModelTagRow.value == value,
                    )
                    .exists()
                )
            key_column = {
                ModelOrder.name: name,
                ModelOrder.created: col(RegisteredModelRow.created_at),
                ModelOrder.updated: col(RegisteredModelRow.updated_at),
            }[query.order_by]
            order = [key_column, col(RegisteredModelRow.id)]
            stmt = stmt.order_by(*(c.desc() if query.descending else c.asc() for c in order))
            rows = session.exec(stmt.offset(query.offset).limit(query.limit + 1)).all()
            return ModelPage(
                models=views.models_public(session, rows[: query.limit]),
                next_page_token=paging.next_token(query.offset, query.limit, len(rows)),
            )
