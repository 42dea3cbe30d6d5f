"""Which store serves which URI scheme: a small registry instead of a chain of prefix checks."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from gallery_common.errors import ArtifactError
from gallery_common.settings import GallerySettings

from .base import ArtifactStore
from .file_store import FileArtifactStore

StoreFactory = Callable[[str, GallerySettings | None], ArtifactStore]
"""Builds a store from its root URI and the settings (endpoints, credentials) it may need."""

_factories: dict[str, StoreFactory] = {}


def register_store(scheme: str, factory: StoreFactory) -> None:
    """Serve `scheme://` roots with `factory`, replacing any earlier registration of the scheme."""
    _factories[scheme.lower()] = factory


def registered_schemes() -> list[str]:
    """The URI schemes `open_store` understands."""
    return sorted(_factories)


def open_store(root_uri: str, settings: GallerySettings | None = None) -> ArtifactStore:
    """The artifact store for `root_uri` (`file:///path` or `s3://bucket[/prefix]`).

    Raises ArtifactError for a scheme no store is registered for.
    """
    scheme = urlsplit(root_uri).scheme.lower()
    factory = _factories.get(scheme)
    if factory is None:
        known = ", ".join(f"{s}://" for s in registered_schemes())
        raise ArtifactError(f"no artifact store for {root_uri!r}; known schemes: {known}")
    return factory(root_uri, settings)


def _s3_store(root_uri: str, settings: GallerySettings | None) -> ArtifactStore:
    # the MinIO SDK is imported by the first s3:// store, not by every process that reads files
    from .s3_store import S3ArtifactStore

    return S3ArtifactStore(root_uri, settings)


register_store("file", FileArtifactStore)
register_store("s3", _s3_store)
