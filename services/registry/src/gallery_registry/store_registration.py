"""Registering a version: its number, its SemVer, its artifacts, once per model.trained event."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from gallery_common.errors import Conflict, InvalidRequest, NotFound
from gallery_common.events import Signature
from gallery_common.projects import DEFAULT_PROJECT

from . import views
from .schemas import ArtifactPublic, ArtifactRole, VersionCreate, VersionPublic, VersionStatus
from .semver_rules import next_semver
from .store_base import StoreBase
from .tables import utcnow

_REGISTER_ATTEMPTS = 5

_VERSION_BY_EVENT = sa.select(views.VERSION).where(views.VERSION.c.source_event_id == sa.bindparam("event"))
_MODEL_FOR_UPDATE = (
    sa.select(views.MODEL.c.id, views.MODEL.c.last_version, views.MODEL.c.last_semver, views.MODEL.c.project)
    .where(views.MODEL.c.name == sa.bindparam("name"))
    .with_for_update()
)
_LATEST_SIGNATURE = (
    sa.select(views.VERSION.c.signature)
    .where(views.VERSION.c.model_id == sa.bindparam("model_id"), views.VERSION.c.signature.is_not(None))
    .order_by(views.VERSION.c.version.desc())
    .limit(1)
)
_INSERT_VERSION = sa.insert(views.VERSION)
_INSERT_ARTIFACT = sa.insert(views.ARTIFACT)
_INSERT_VERSION_TAG = sa.insert(views.VERSION_TAG)
_BUMP_MODEL = (
    sa.update(views.MODEL)
    .where(views.MODEL.c.id == sa.bindparam("model_id"))
    .values(last_version=sa.bindparam("number"), last_semver=sa.bindparam("semver"), updated_at=sa.bindparam("now"))
)
_VERSION_ID = sa.select(views.VERSION.c.id).where(
    views.VERSION.c.model_id == sa.bindparam("model_id"), views.VERSION.c.version == sa.bindparam("version")
)


class RegistrationOps(StoreBase):
    """Version registration, the write path of `RegistryStore`."""

    def register_version(
        self,
        name: str,
        data: VersionCreate,
        *,
        create_model: bool = False,
        project: str | None = None,
        authorize: Callable[[str], None] | None = None,
    ) -> VersionPublic:
        """Add the next version of `name` with its artifacts.

        The version number is the model's highest so far plus one; the SemVer follows
        `semver_rules`. With `source_event_id` set, registering the same event again returns the
        version it made the first time and changes nothing. `create_model` creates an unknown
        model (the gate does, for a model's first training run) in `project` (None: `default`);
        otherwise NotFound. With `project` given, a model that belongs to another project is refused
        (InvalidRequest: a model.trained of one project cannot add versions to another's model).
        `authorize` is called with the project of an existing model before anything is written (the
        REST routes' role check, which raises to refuse), in the transaction that reads the model.
        """
        for attempt in range(_REGISTER_ATTEMPTS):
            try:
                return self._register_once(name, data, create_model, project, authorize)
            except sa.exc.IntegrityError:
                # a concurrent registration won a race (same event, same new model): look again
                if attempt == _REGISTER_ATTEMPTS - 1:
                    raise Conflict(f"could not register a version of {name!r}: concurrent changes") from None
        raise AssertionError("unreachable")

    def _register_once(
        self,
        name: str,
        data: VersionCreate,
        create_model: bool,
        project: str | None,
        authorize: Callable[[str], None] | None,
    ) -> VersionPublic:
        # Core statements rather than ORM units of work: registration is the registry's hot write
        with self._write() as session:
            conn = session.connection()
            if data.source_event_id is not None:
                existing = conn.execute(_VERSION_BY_EVENT, {"event": data.source_event_id}).first()
                if existing is not None:
                    found = views.version_public(session, existing)
                    if found.name != name:
                        raise Conflict(
                            f"event {data.source_event_id} already registered version {found.version} "
                            f"of model {found.name!r}"
                        )
                    return found
            now = utcnow()
            model = conn.execute(_MODEL_FOR_UPDATE, {"name": name}).first()
            if model is None:
                if not create_model:
                    raise NotFound(f"model {name!r} not found")
                model_project = project or DEFAULT_PROJECT
                model_id = _inserted_id(
                    conn.execute(
                        sa.insert(views.MODEL).values(
                            name=name, project=model_project, last_version=0, created_at=now, updated_at=now
                        )
                    )
                )
                last_version, last_semver = 0, None
            else:
                model_id, last_version, last_semver, model_project = model
                if authorize is not None:
                    authorize(model_project)
                if project is not None and model_project != project:
                    raise InvalidRequest(
                        f"model {name!r} belongs to another project: project {project!r} cannot register "
                        "versions of it (model names are unique across the installation)"
                    )
            # versions registered without a signature do not change the API, so compare with the
            # newest one that has a signature
            latest_signed = conn.execute(_LATEST_SIGNATURE, {"model_id": model_id}).scalar()
            latest_signature = Signature.model_validate(latest_signed) if latest_signed else None
            semver = next_semver(last_semver, latest_signature, data.signature, data.semver)
            number = last_version + 1
            parent = data.lineage.parent_version
            if (
                parent is not None
                and conn.execute(_VERSION_ID, {"model_id": model_id, "version": parent}).first() is None
            ):
                raise InvalidRequest(f"lineage.parent_version {parent} is not a version of model {name!r}")
            signature = data.signature.model_dump(mode="json") if data.signature else None
            federated = data.lineage.federation
            federation = federated.model_dump(mode="json") if federated else None
            version_id = _inserted_id(
                conn.execute(
                    _INSERT_VERSION,
                    dict(
                        model_id=model_id,
                        version=number,
                        semver=semver,
                        status=VersionStatus.pending.value,
                        description=data.description,
                        signature=signature,
                        metrics=dict(data.metrics),
                        training_job_id=data.lineage.training_job_id,
                        dataset_fingerprint=data.lineage.dataset_fingerprint,
                        config_hash=data.lineage.config_hash,
                        parent_version=parent,
                        federation=federation,
                        run_id=data.run_id,
                        source_event_id=data.source_event_id,
                        source=data.source,
                        task=data.task,
                        class_names=data.class_names,
                        created_at=now,
                        updated_at=now,
                    ),
                )
            )
            conn.execute(_BUMP_MODEL, {"model_id": model_id, "number": number, "semver": semver, "now": now})
            if data.artifacts:
                conn.execute(
                    _INSERT_ARTIFACT,
                    [
                        {
                            "version_id": version_id,
                            "role": ArtifactRole(role).value,
                            "uri": ref.uri,
                            "sha256": ref.sha256,
                            "size": ref.size,
                            "format": ref.format,
                            "created_at": now,
                        }
                        for role, ref in data.artifacts.items()
                    ],
                )
            if data.tags:
                conn.execute(
                    _INSERT_VERSION_TAG,
                    [{"version_id": version_id, "key": k, "value": v} for k, v in data.tags.items()],
                )
            # what was just written, without reading it back
            return VersionPublic(
                name=name,
                project=model_project,
                version=number,
                semver=semver,
                status=VersionStatus.pending,
                description=data.description,
                signature=data.signature,
                metrics=dict(data.metrics),
                tags=dict(sorted(data.tags.items())),
                lineage=data.lineage,
                run_id=data.run_id,
                source_event_id=data.source_event_id,
                source=data.source,
                task=data.task,
                class_names=data.class_names,
                evaluation_report=None,
                rejection_reasons=None,
                artifacts={
                    ArtifactRole(role): ArtifactPublic(
                        role=role, uri=ref.uri, sha256=ref.sha256, size=ref.size, format=ref.format, created_at=now
                    )
                    for role, ref in sorted(data.artifacts.items())
                },
                aliases=[],
                created_at=now,
                updated_at=now,
            )


def _inserted_id(result: sa.CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    if key is None:
        raise RuntimeError("the insert returned no primary key")
    return int(key[0])
