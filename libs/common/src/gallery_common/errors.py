"""Domain errors shared by every service, each mapped once to an HTTP status."""

from __future__ import annotations


class GalleryError(Exception):
    """Base of every error a client may see; `status_code` is its HTTP answer."""

    status_code = 500
    retry_after: int | None = None  # seconds a client should wait before asking again (sent as Retry-After)

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def error_headers(exc: GalleryError) -> dict[str, str]:
    """The headers an error's answer carries beside its `{"error": ...}`: a Bearer challenge on 401, and
    Retry-After when the error says when to come back (a full queue)."""
    if exc.status_code == 401:
        return {"WWW-Authenticate": "Bearer"}
    if exc.retry_after is not None:
        return {"Retry-After": str(exc.retry_after)}
    return {}


class NotFound(GalleryError):
    status_code = 404


class Conflict(GalleryError):
    status_code = 409


class InvalidRequest(GalleryError):
    status_code = 422


class BadRequest(GalleryError):
    status_code = 400


class Unauthorized(GalleryError):
    status_code = 401


class Forbidden(GalleryError):
    status_code = 403


class Unavailable(GalleryError):
    status_code = 503


class ArtifactError(GalleryError):
    """An artifact cannot be stored or read."""

    status_code = 400


class ArtifactNotFound(ArtifactError, NotFound):
    status_code = 404


class IntegrityError(ArtifactError):
    """An artifact's bytes do not match the sha256 recorded for it."""

    status_code = 409


class InvalidKey(ArtifactError):
    """An artifact key that would escape its store's root."""

    status_code = 400


class StorageFull(ArtifactError, Unavailable):
    """No space left where an artifact is written (a full disk or quota); it may succeed once space is freed."""

    status_code = 507
