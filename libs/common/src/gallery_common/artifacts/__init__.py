"""Artifact stores: bytes under keys, addressed by URI and checked by sha256.

`open_store(settings.resolved_artifact_root, settings)` gives the store a service uses; the URI
scheme picks the implementation (`file://` on a local disk, `s3://` on MinIO or any S3 API). Reads
refuse an artifact over GALLERY_MAX_ARTIFACT_BYTES with `ArtifactTooLarge`.

The S3 store and its retry policy load the MinIO SDK (a fifth of a second) on first use, so a
process that only reads `file://` artifacts (a model server's cold start) never imports it.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .base import ArtifactInfo, ArtifactStore, ArtifactTooLarge, Source, validate_key
from .file_store import FileArtifactStore
from .schemes import StoreFactory, open_store, register_store, registered_schemes

if TYPE_CHECKING:
    from .retry import RetryPolicy, is_transient_s3_error
    from .s3_store import S3ArtifactStore

_LAZY = {"RetryPolicy": ".retry", "is_transient_s3_error": ".retry", "S3ArtifactStore": ".s3_store"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module, __name__), name)


__all__ = [
    "ArtifactInfo",
    "ArtifactStore",
    "ArtifactTooLarge",
    "FileArtifactStore",
    "RetryPolicy",
    "S3ArtifactStore",
    "Source",
    "StoreFactory",
    "is_transient_s3_error",
    "open_store",
    "register_store",
    "registered_schemes",
    "validate_key",
]
