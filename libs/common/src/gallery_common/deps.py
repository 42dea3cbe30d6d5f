"""Typed FastAPI dependencies over what the app factory's lifespan opened."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from .app import ServiceResources
from .artifacts import ArtifactStore
from .auth import Caller, authorize, require_admin
from .bus import EventBus
from .errors import Unavailable
from .settings import GallerySettings


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
    with Session(engine) as session:
        yield session


SettingsDep = Annotated[GallerySettings, Depends(get_app_settings)]
BusDep = Annotated[EventBus, Depends(get_bus)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
SessionDep = Annotated[Session, Depends(get_session)]
CallerDep = Annotated[Caller, Depends(authorize)]
AdminDep = Annotated[Caller, Depends(require_admin)]
