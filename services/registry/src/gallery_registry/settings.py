"""The registry's settings: the common ones plus which aliases only an admin may move."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from gallery_common.settings import GallerySettings


class RegistrySettings(GallerySettings):
    """`GALLERY_*` settings of the registry service."""

    service_name: str = "registry"
    port: int = Field(default=8001, ge=1, le=65535)
    protected_aliases: Annotated[frozenset[str], NoDecode] = Field(
        default=frozenset({"production"}),
        description="aliases only an admin token may set or delete, comma separated",
    )

    @field_validator("protected_aliases", mode="before")
    @classmethod
    def _parse_aliases(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(a.strip() for a in value.split(",") if a.strip())
        return value
