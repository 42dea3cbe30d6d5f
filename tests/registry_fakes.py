"""An in-memory registry for unit tests: the `RegistryReader` reads every service makes, and the writes
they make over REST (attaching an artifact, moving an alias), with the registry's own rules: one
artifact per role (the same sha256 again is a no-op) and NotFound for what it does not hold."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from gallery_common.contracts.registry import (
    AliasPublic,
    ArtifactPublic,
    ArtifactRole,
    ModelPublic,
    RegistryReader,
    VersionPublic,
    VersionStatus,
)
from gallery_common.errors import Conflict, InvalidRequest, NotFound
from gallery_common.events import ArtifactRef, Lineage

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


class InMemoryRegistry(RegistryReader):
    """Versions by (model, version); `attached` and `alias_moves` record the writes, in order."""

    def __init__(self) -> None:
        self.versions: dict[tuple[str, int], VersionPublic] = {}
        self.aliases: dict[str, dict[str, int]] = {}
        self.attached: list[tuple[str, int, str, ArtifactRef]] = []
        self.alias_moves: list[tuple[str, str, int, str | None]] = []

    def add_version(
        self,
        model: str,
        version: int,
        artifacts: Mapping[str, ArtifactRef] | None = None,
        *,
        status: VersionStatus = VersionStatus.validated,
        class_names: list[str] | None = None,
        task: str = "classification",
    ) -> VersionPublic:
        """Register `model:version` as the registry would show it after the gate (validated by default)."""
        registered = VersionPublic(
            name=model,
            version=version,
            semver=f"{version}.0.0",
            status=status,
            description=None,
            signature=None,
            metrics={},
            tags={},
            lineage=Lineage(),
            run_id=None,
            source_event_id=None,
            source=None,
            task=task,
            class_names=class_names,
            evaluation_report=None,
            rejection_reasons=None,
            artifacts={ArtifactRole(role): _public(role, ref) for role, ref in (artifacts or {}).items()},
            aliases=[],
            created_at=EPOCH,
            updated_at=EPOCH,
        )
        self.versions[(model, version)] = registered
        return registered

    def detach(self, model: str, version: int, role: str) -> None:
        """Take an artifact off a version (the REST API cannot; a test sets up a version that lacks one)."""
        del self.get_version(model, version).artifacts[ArtifactRole(role)]

    def get_model(self, name: str, /) -> ModelPublic:
        numbers = [version for model, version in self.versions if model == name]
        if not numbers:
            raise NotFound(f"registry: model {name} not found (model {name!r} not found)")
        return ModelPublic(
            name=name,
            description=None,
            owner=None,
            tags={},
            created_at=EPOCH,
            updated_at=EPOCH,
            latest_version=max(numbers),
            aliases=dict(self.aliases.get(name, {})),
        )

    def get_version(self, name: str, version: int, /) -> VersionPublic:
        found = self.versions.get((name, version))
        if found is None:
            raise NotFound(f"registry: {name}:{version} not found (version {version} of {name} not found)")
        return found

    def get_version_by_alias(self, name: str, alias: str, /) -> VersionPublic:
        number = self.aliases.get(name, {}).get(alias)
        if number is None:
            raise NotFound(f"registry: alias {name}@{alias} not found (model {name!r} has no alias {alias!r})")
        return self.get_version(name, number)

    def attach_artifact(self, model: str, version: int, role: str, ref: ArtifactRef) -> ArtifactPublic:
        found = self.get_version(model, version)
        try:
            key = ArtifactRole(role)
        except ValueError:
            raise InvalidRequest(f"registry refused {role} artifact of {model}:{version}: no such role") from None
        current = found.artifacts.get(key)
        if current is not None:
            if current.sha256 != ref.sha256:
                raise Conflict(f"registry refused {role} artifact of {model}:{version}: another sha256 is attached")
            return current
        found.artifacts[key] = _public(role, ref)
        self.attached.append((model, version, role, ref))
        return found.artifacts[key]

    def set_alias(self, model: str, alias: str, version: int, reason: str | None = None) -> AliasPublic:
        found = self.get_version(model, version)
        previous = self.aliases.setdefault(model, {}).get(alias)
        if previous is not None:
            self.versions[(model, previous)].aliases.remove(alias)
        self.aliases[model][alias] = version
        found.aliases.append(alias)
        self.alias_moves.append((model, alias, version, reason))
        return AliasPublic(name=model, alias=alias, version=version, updated_at=EPOCH, updated_by="test")

    def close(self) -> None:
        pass


def _public(role: str, ref: ArtifactRef) -> ArtifactPublic:
    return ArtifactPublic(role=ArtifactRole(role), created_at=EPOCH, **ref.model_dump())
