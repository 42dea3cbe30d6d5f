"""A small blocking client of the registry's REST API for services: versions, artifacts, aliases.

Blocking (httpx): call it from a worker thread or a plain `def` route. An unreachable registry or
a 5xx answer is retried with backoff (every call is idempotent: attaching the same sha256 again
is a no-op, and moving an alias to where it points is too), so a registry restart does not fail an
hour of optimization or a rollout. Answers are the registry's own models
(`gallery_common.contracts.registry`), read with the `RegistryReader` reads its store offers too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from gallery_common.contracts.registry import AliasPublic, ArtifactPublic, ModelPublic, RegistryReader, VersionPublic
from gallery_common.errors import Conflict, GalleryError, InvalidRequest, NotFound, Unavailable
from gallery_common.events import ArtifactRef

M = TypeVar("M", bound=BaseModel)


class RegistryUnavailable(Unavailable):
    """The registry cannot be used now; `retryable` when waiting may help (unreachable, 5xx)."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class RegistryClient(RegistryReader):
    """The registry at `base_url`, called with `token` as bearer when given, or with `auth` (a service's
    own identity: `gallery_common.service_identity.service_auth`)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retry_delays: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
        transport: httpx.BaseTransport | None = None,
        auth: httpx.Auth | None = None,
    ) -> None:
        self.retry_delays = tuple(retry_delays)
        headers = {"Authorization": f"Bearer {token}"} if token and auth is None else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport, auth=auth
        )

    def close(self) -> None:
        self._http.close()

    def get_model(self, model: str, /) -> ModelPublic:
        return self._read(ModelPublic, "GET", f"/api/v1/models/{model}", what=f"model {model}")

    def get_version(self, model: str, version: int, /) -> VersionPublic:
        return self._read(VersionPublic, "GET", f"/api/v1/models/{model}/versions/{version}", what=f"{model}:{version}")

    def get_version_by_alias(self, model: str, alias: str, /) -> VersionPublic:
        return self._read(
            VersionPublic, "GET", f"/api/v1/models/{model}/aliases/{alias}", what=f"alias {model}@{alias}"
        )

    def attach_artifact(self, model: str, version: int, role: str, ref: ArtifactRef) -> ArtifactPublic:
        """Record `ref` as the version's `role` artifact; the same sha256 again is a no-op, another is Conflict."""
        return self._read(
            ArtifactPublic,
            "PUT",
            f"/api/v1/models/{model}/versions/{version}/artifacts/{role}",
            what=f"{role} artifact of {model}:{version}",
            json=ref.model_dump(mode="json", exclude_none=True),
        )

    def set_alias(self, model: str, alias: str, version: int, reason: str | None = None) -> AliasPublic:
        """Point `model@alias` at `version`, recorded in the alias history with `reason`."""
        return self._read(
            AliasPublic,
            "PUT",
            f"/api/v1/models/{model}/aliases/{alias}",
            what=f"alias {model}@{alias}",
            json={"version": version, "reason": reason},
        )

    def _read(self, answer: type[M], method: str, path: str, *, what: str, json: Any = None) -> M:
        """The call's answer as `answer`; an answer that is not one is the registry failing, not retried."""
        body = self._call(method, path, what=what, json=json)
        try:
            return answer.model_validate(body)
        except ValidationError as exc:
            raise RegistryUnavailable(
                f"registry answered {what} with something that is not a {answer.__name__}: {exc}"
            ) from None

    def _call(self, method: str, path: str, *, what: str, json: Any = None) -> Any:
        for delay in (*self.retry_delays, None):
            try:
                return self._call_once(method, path, what=what, json=json)
            except RegistryUnavailable as exc:
                if delay is None or not exc.retryable:
                    raise
                time.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _call_once(self, method: str, path: str, *, what: str, json: Any = None) -> Any:
        try:
            response = self._http.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(
                f"registry at {self.base_url} unreachable ({type(exc).__name__}: {exc})", retryable=True
            ) from exc
        if response.is_success:
            return response.json()
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
                f"registry refused this service's token ({status}: {message}); set GALLERY_REGISTRY_TOKEN "
                "or the service's GALLERY_OIDC_CLIENT_ID and GALLERY_OIDC_CLIENT_SECRET"
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
