"""Artifact stores: bytes under keys, addressed by URI and checked by sha256.

`open_store(settings.resolved_artifact_root, settings)` gives the store a service uses; the URI
scheme picks the implementation (`file://` on a local disk, `s3://` on MinIO or any S3 API). Reads
refuse an artifact over GALLERY_MAX_ARTIFACT_BYTES with `ArtifactTooLarge`.
"""

from .base import ArtifactInfo, ArtifactStore, ArtifactTooLarge, Source, validate_key
from .file_store import FileArtifactStore
from .retry import RetryPolicy, is_transient_s3_error
from .s3_store import S3ArtifactStore
from .schemes import StoreFactory, open_store, register_store, registered_schemes

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
