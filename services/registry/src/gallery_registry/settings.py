"""The registry's settings: the common ones, which aliases only an admin may move, and how the validation
gate explains a version (global feature importance)."""

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
    gate_importance: bool = Field(
        default=True,
        description="the gate computes each version's global feature importance (mean |SHAP| on a sample of its "
        "test split) and attaches its explainer profile (a summary of its training split)",
    )
    gate_importance_rows: int = Field(
        default=32, ge=1, le=1000, description="test-split rows the gate explains for a version's feature importance"
    )
    gate_importance_nsamples: int = Field(
        default=400,
        ge=10,
        le=10_000,
        description="Kernel SHAP coalitions the gate evaluates per explained row (each costs one model run per "
        "background row)",
    )

    @field_validator("protected_aliases", mode="before")
    @classmethod
    def _parse_aliases(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(a.strip() for a in value.split(",") if a.strip())
        return value
