"""The identity a service uses when it calls another service on its own account (never a person's).

Two kinds, picked by the settings of the calling service:

- with `GALLERY_OIDC_ISSUER`, `GALLERY_OIDC_CLIENT_ID` and `GALLERY_OIDC_CLIENT_SECRET`, a token of
  the OAuth 2 client-credentials grant from the issuer's token endpoint (its `sub` is the client id,
  so the callee's audit trail names the service), fetched when first needed and again shortly before
  it expires or when the callee answers 401;
- otherwise the static token set for that callee (`GALLERY_REGISTRY_TOKEN` and the like), which the
  callee maps to a role with its own `GALLERY_API_TOKENS`.

`service_auth(settings, static_token)` gives an `httpx.Auth` for either (None: send nothing).
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncGenerator, Generator

import anyio
import httpx
from pydantic import SecretStr

from .errors import Unauthorized
from .settings import GallerySettings

DISCOVERY_PATH = "/.well-known/openid-configuration"
# a token is renewed this long before its expiry, so one in flight does not expire at the callee
RENEW_BEFORE_S = 30.0


class ClientCredentials:
    """This service's access tokens from the issuer's client-credentials grant, kept until near expiry."""

    def __init__(
        self,
        issuer: str,
        client_id: str,
        client_secret: str,
        scope: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self._secret = client_secret
        self.scope = scope
        self.timeout_s = timeout_s
        self._token: str | None = None
        self._renew_at = 0.0
        self._token_endpoint: str | None = None
        self._lock = threading.Lock()

    def _endpoint(self) -> str:
        if self._token_endpoint is None:
            answer = httpx.get(self.issuer + DISCOVERY_PATH, timeout=self.timeout_s)
            answer.raise_for_status()
            endpoint = answer.json().get("token_endpoint")
            if not isinstance(endpoint, str):
                raise Unauthorized(f"the issuer {self.issuer} names no token_endpoint in its discovery document")
            self._token_endpoint = endpoint
        return self._token_endpoint

    def fresh(self) -> bool:
        return self._token is not None and time.monotonic() < self._renew_at

    def token(self) -> str:
        """A valid access token of this client (blocking: fetches one when the kept one is near expiry)."""
        with self._lock:
            if self._token is not None and time.monotonic() < self._renew_at:
                return self._token
            form = {"grant_type": "client_credentials", **({"scope": self.scope} if self.scope else {})}
            try:
                answer = httpx.post(
                    self._endpoint(), data=form, auth=(self.client_id, self._secret), timeout=self.timeout_s
                )
            except httpx.HTTPError as exc:
                raise Unauthorized(
                    f"cannot reach the issuer {self.issuer} for a token of {self.client_id}: {exc}"
                ) from None
            if answer.status_code != 200:
                raise Unauthorized(
                    f"the issuer refused a client-credentials token to {self.client_id} "
                    f"(HTTP {answer.status_code}): {answer.text[:200]}"
                )
            body = answer.json()
            self._token = str(body["access_token"])
            lifetime = float(body.get("expires_in", 300))
            self._renew_at = time.monotonic() + max(lifetime - RENEW_BEFORE_S, lifetime / 2)
            return self._token

    def seconds_until_renewal(self) -> float:
        """How long the kept token serves before it should be renewed (0 or less: now)."""
        return self._renew_at - time.monotonic() if self._token is not None else 0.0

    def forget(self) -> None:
        """Drop the kept token (the callee refused it): the next call fetches another."""
        with self._lock:
            self._token = None

    async def atoken(self) -> str:
        if self._token is not None and self.fresh():
            return self._token
        return await anyio.to_thread.run_sync(self.token)


class ServiceAuth(httpx.Auth):
    """`Authorization: Bearer` with this service's own token: client credentials or a static token."""

    def __init__(self, static_token: str | None = None, credentials: ClientCredentials | None = None) -> None:
        if static_token is None and credentials is None:
            raise ValueError("a service identity needs a static token or client credentials")
        self.static_token = static_token
        self.credentials = credentials

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.credentials is None:
            request.headers["Authorization"] = f"Bearer {self.static_token}"
            yield request
            return
        request.headers["Authorization"] = f"Bearer {self.credentials.token()}"
        response = yield request
        if response.status_code == 401:  # revoked or rotated at the issuer: one more try with a new token
            self.credentials.forget()
            request.headers["Authorization"] = f"Bearer {self.credentials.token()}"
            yield request

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if self.credentials is None:
            request.headers["Authorization"] = f"Bearer {self.static_token}"
            yield request
            return
        request.headers["Authorization"] = f"Bearer {await self.credentials.atoken()}"
        response = yield request
        if response.status_code == 401:
            self.credentials.forget()
            request.headers["Authorization"] = f"Bearer {await self.credentials.atoken()}"
            yield request


def client_credentials(settings: GallerySettings) -> ClientCredentials | None:
    """This service's client at the issuer, when GALLERY_OIDC_ISSUER, _CLIENT_ID and _CLIENT_SECRET are set."""
    if settings.oidc_issuer is None or settings.oidc_client_id is None or settings.oidc_client_secret is None:
        return None
    return ClientCredentials(
        settings.oidc_issuer,
        settings.oidc_client_id,
        settings.oidc_client_secret.get_secret_value(),
        scope=settings.oidc_client_scope,
    )


def service_auth(settings: GallerySettings, static_token: SecretStr | None) -> ServiceAuth | None:
    """How this service authenticates to another: its client credentials when configured, else
    `static_token` (the callee's token setting), else nothing (a callee without tokens)."""
    credentials = client_credentials(settings)
    if credentials is not None:
        return ServiceAuth(credentials=credentials)
    if static_token is not None and static_token.get_secret_value():
        return ServiceAuth(static_token=static_token.get_secret_value())
    return None
