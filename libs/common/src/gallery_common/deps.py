"""Typed FastAPI dependencies over what the app factory's lifespan opened.

`SessionDep` is built on first import: SQLModel (a fifth of a second) loads only in services that
keep a database, not in the gateway.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

from .app import ServiceResources
from .artifacts import ArtifactStore
from .auth import Caller, authorize, require_admin
from .bus import EventBus
from .errors import Unavailable
from .settings import GallerySettings

if TYPE_CHECKING:
    from sqlmodel import Session


def get_app_settings(request: Request) -> GallerySettings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_resources(request: Request) -> ServiceResources:
    """What the app's lifespan opened, and the service's core (`core_as`)."""
    return request.app.state.resources  # type: ignore[no-any-return]


def get_bus(request: Request) -> EventBus:
    bus = get_resources(request).bus
    if bus is None:
        raise Unavailable("this service has no event bus")
    return bus


def get_store(request: Request) -> ArtifactStore:
    store = get_resources(request).store
    if store is None:
        raise Unavailable("this service has no artifact store")
    return store


def get_session(request: Request) -> Iterator[Session]:
    engine = get_resources(request).engine
    if engine is None:
        raise Unavailable("this service has no database")
    from sqlmodel import Session

    with Session(engine) as session:
        yield session


SettingsDep = Annotated[GallerySettings, Depends(get_app_settings)]
BusDep = Annotated[EventBus, Depends(get_bus)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
CallerDep = Annotated[Caller, Depends(authorize)]
AdminDep = Annotated[Caller, Depends(require_admin)]

if TYPE_CHECKING:
    SessionDep = Annotated[Session, Depends(get_session)]


def __getattr__(name: str) -> Any:
    if name != "SessionDep":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from sqlmodel import Session

    session_dep = globals()["SessionDep"] = Annotated[Session, Depends(get_session)]
    return session_dep
