"""A small blocking client of the registry's REST API for services: versions, artifacts, aliases.

Blocking (httpx): call it from a worker thread or a plain `def` route. An unreachable registry or
a 5xx answer is retried with backoff (both calls are idempotent: attaching the same sha256 again
is a no-op, and moving an alias to where it points is too), so a registry restart does not fail an
hour of optimization or a rollout.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx

from gallery_common.errors import Conflict, GalleryError, InvalidRequest, NotFound, Unavailable
from gallery_common.events import ArtifactRef


class RegistryUnavailable(Unavailable):
    """The registry cannot be used now; `retryable` when waiting may help (unreachable, 5xx)."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class RegistryClient:
    """The registry at `base_url`, called with `token` as bearer when given."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retry_delays: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retry_delays = tuple(retry_delays)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def get_version(self, model: str, version: int) -> dict[str, Any]:
        """The version as the registry shows it (artifacts by role, class names, signature, ...)."""
        return self._call("GET", f"/api/v1/models/{model}/versions/{version}", what=f"{model}:{version}")

    def attach_artifact(self, model: str, version: int, role: str, ref: ArtifactRef) -> dict[str, Any]:
        """Record `ref` as the version's `role` artifact; the same sha256 again is a no-op, another is Conflict."""
        return self._call(
            "PUT",
            f"/api/v1/models/{model}/versions/{version}/artifacts/{role}",
            what=f"{role} artifact of {model}:{version}",
            json=ref.model_dump(mode="json", exclude_none=True),
        )

    def set_alias(self, model: str, alias: str, version: int, reason: str | None = None) -> dict[str, Any]:
        """Point `model@alias` at `version`, recorded in the alias history with `reason`."""
        return self._call(
            "PUT",
            f"/api/v1/models/{model}/aliases/{alias}",
            what=f"alias {model}@{alias}",
            json={"version": version, "reason": reason},
        )

    def get_alias(self, model: str, alias: str) -> dict[str, Any] | None:
        """The version `model@alias` points at, or None when the alias is not set."""
        try:
            return self._call("GET", f"/api/v1/models/{model}/aliases/{alias}", what=f"alias {model}@{alias}")
        except NotFound:
            return None

    def _call(self, method: str, path: str, *, what: str, json: Any = None) -> dict[str, Any]:
        for delay in (*self.retry_delays, None):
            try:
                return self._call_once(method, path, what=what, json=json)
            except RegistryUnavailable as exc:
                if delay is None or not exc.retryable:
                    raise
                time.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _call_once(self, method: str, path: str, *, what: str, json: Any = None) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(
                f"registry at {self.base_url} unreachable ({type(exc).__name__}: {exc})", retryable=True
            ) from exc
        if response.is_success:
            return response.json()  # type: ignore[no-any-return]
        message = _error_message(response)
        status = response.status_code
        if status == 404:
            raise NotFound(f"registry: {what} not found ({message})")
        if status == 409:
            raise Conflict(f"registry refused {what}: {message}")
        if status in (400, 422):
            raise InvalidRequest(f"registry refused {what}: {message}")
        if status in (401, 403):
            raise RegistryUnavailable(
                f"registry refused this service's token ({status}: {message}); set GALLERY_REGISTRY_TOKEN"
            )
        if status >= 500:
            raise RegistryUnavailable(f"registry failed on {what} ({status}: {message})", retryable=True)
        raise GalleryError(f"registry answered {status} on {what}: {message}")


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return str(body)[:200]
