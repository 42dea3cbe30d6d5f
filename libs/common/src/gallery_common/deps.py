"""Typed FastAPI dependencies over what the app factory's lifespan opened."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from .artifacts import ArtifactStore
from .auth import Caller, authorize, require_admin
from .bus import EventBus
from .errors import Unavailable
from .settings import GallerySettings


def get_app_settings(request: Request) -> GallerySettings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_bus(request: Request) -> EventBus:
    bus = request.app.state.resources.bus
    if bus is None:
        raise Unavailable("this service has no event bus")
    return bus  # type: ignore[no-any-return]


def get_store(request: Request) -> ArtifactStore:
    store = request.app.state.resources.store
    if store is None:
        raise Unavailable("this service has no artifact store")
    return store  # type: ignore[no-any-return]


def get_session(request: Request) -> Iterator[Session]:
    engine = request.app.state.resources.engine
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
