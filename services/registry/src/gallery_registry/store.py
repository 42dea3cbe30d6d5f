"""The registry's system of record: models, versions, artifacts, aliases and validation policies.

`RegistryStore` is the one way in. Every method is one transaction, takes and returns the
pydantic models of `schemas`, and raises `gallery_common.errors` (NotFound, Conflict,
InvalidRequest) that the REST layers map to HTTP answers. The methods block (SQL): call them from
plain `def` routes or worker threads, never directly inside `async def`. Its reads are the
`RegistryReader` every other way into the registry (the REST client, test fakes) offers too.

    store = open_registry("sqlite:///registry.db")   # migrates the schema to head
    version = store.register_version("iris", VersionCreate(...), create_model=True)
    store.set_version_status("iris", version.version, VersionStatus.validating)
"""

from __future__ import annotations

from gallery_common.contracts.registry import RegistryReader
from gallery_common.db import make_engine

from .catalogue import CatalogueOps
from .store_aliases import AliasOps, check_alias_name
from .store_cards import CardOps
from .store_models import ModelOps
from .store_registration import RegistrationOps
from .store_versions import TRANSITIONS, VersionOps

__all__ = ["TRANSITIONS", "RegistryStore", "check_alias_name", "open_registry"]


class RegistryStore(ModelOps, RegistrationOps, VersionOps, AliasOps, CardOps, CatalogueOps, RegistryReader):
    """Models, versions, artifacts, aliases, policies, card text and the catalogue over one SQLAlchemy engine."""


def open_registry(url: str, *, migrate: bool = True) -> RegistryStore:
    """A store on a new engine for `url`, its schema migrated to the newest revision."""
    from .migrations import upgrade

    engine = make_engine(url)
    if migrate:
        upgrade(engine)
    return RegistryStore(engine)
