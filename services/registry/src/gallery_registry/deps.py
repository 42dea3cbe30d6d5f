"""Typed dependencies of the registry's routes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from gallery_common.audit_trail import AuditTrail
from gallery_common.auth import Caller
from gallery_common.deps import get_resources
from gallery_common.errors import Forbidden
from gallery_common.settings import Role

from .model_card import ModelCards
from .settings import RegistrySettings
from .store import RegistryStore

if TYPE_CHECKING:
    from .gate.validator import ValidationGate


@dataclass(frozen=True)
class RegistryCore:
    """What the registry app's startup builds: the store of models and versions, the validation gate,
    and the audit trail it records its changes in (None without a bus)."""

    store: RegistryStore
    gate: ValidationGate
    audit: AuditTrail | None = None

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


def check_alias_permission(settings: RegistrySettings, caller: Caller, alias: str) -> None:
    """Protected aliases (GALLERY_PROTECTED_ALIASES) move only with an admin token."""
    if alias in settings.protected_aliases and not caller.can(Role.admin):
        raise Forbidden(f"alias {alias!r} is protected: moving or deleting it needs the admin role")


RegistryStoreDep = Annotated[RegistryStore, Depends(get_registry_store)]
RegistrySettingsDep = Annotated[RegistrySettings, Depends(get_registry_settings)]
ModelCardsDep = Annotated[ModelCards, Depends(get_model_cards)]
