"""Typed dependencies of the registry's routes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from gallery_common.audit_trail import AuditTrail
from gallery_common.auth import Caller
from gallery_common.deps import get_resources
from gallery_common.errors import Forbidden
from gallery_common.projects import role_in
from gallery_common.projects_kv import ProjectsBucket
from gallery_common.settings import Role

from .model_card import ModelCards
from .settings import RegistrySettings
from .store import RegistryStore

if TYPE_CHECKING:
    from .gate.validator import ValidationGate


@dataclass(frozen=True)
class RegistryCore:
    """What the registry app's startup builds: the store of models and versions, the validation gate,
    the audit trail it records its changes in and the projects bucket it writes (None without a bus)."""

    store: RegistryStore
    gate: ValidationGate
    audit: AuditTrail | None = None
    projects: ProjectsBucket | None = None  # the registry writes the projects bucket (None without a bus)

    @property
    def cards(self) -> ModelCards:
        """Generated model cards: rendered from the store, attached through the gate's artifact store."""
        return self.gate.cards


async def get_registry_store(request: Request) -> RegistryStore:
    # async: a plain attribute read, so FastAPI need not hop to its thread pool for it
    return get_resources(request).core_as(RegistryCore).store


async def get_model_cards(request: Request) -> ModelCards:
    return get_resources(request).core_as(RegistryCore).cards


async def get_registry_settings(request: Request) -> RegistrySettings:
    return request.app.state.settings  # type: ignore[no-any-return]


def check_alias_permission(settings: RegistrySettings, caller: Caller, alias: str, project: str) -> None:
    """Protected aliases (GALLERY_PROTECTED_ALIASES) move only for an admin of the model's `project`
    (an installation-wide admin is one in every project)."""
    if alias not in settings.protected_aliases:
        return
    held = role_in(caller, project, settings.project_directory())
    if held is None or held.rank < Role.admin.rank:
        raise Forbidden(
            f"alias {alias!r} is protected: moving or deleting it needs the admin role in project {project!r}; "
            f"your token has {held.value if held else 'no role'} there"
        )


RegistryStoreDep = Annotated[RegistryStore, Depends(get_registry_store)]
RegistrySettingsDep = Annotated[RegistrySettings, Depends(get_registry_settings)]
ModelCardsDep = Annotated[ModelCards, Depends(get_model_cards)]
