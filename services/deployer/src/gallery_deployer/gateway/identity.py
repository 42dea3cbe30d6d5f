"""Who the gateway is when it calls its backends: model servers (REST and gRPC) and the deployer's wake.

With `GALLERY_OIDC_ISSUER`, `GALLERY_OIDC_CLIENT_ID` and `GALLERY_OIDC_CLIENT_SECRET` set, the gateway
calls as its own OAuth 2 client: a client-credentials token (`gallery_common.service_identity`), which a
model server or the deployer verifies like any OIDC token and maps to a role through its group (give
the gateway's client a group that `GALLERY_OIDC_GROUP_ROLES` maps to `inference` there). Otherwise the
static token set for that callee (`GALLERY_MODEL_SERVER_TOKEN`, `GALLERY_DEPLOYER_TOKEN`).

The token is kept off the request path: a background task fetches it at start and renews it before it
expires (retrying every few seconds while the issuer is away, the token in hand serving meanwhile), and
each renewal rewrites the header the upstream pool sends. A backend that answers 401 (the token revoked,
or the issuer's keys rotated under it) has the token renewed at once, and the request sent once more.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from gallery_common.errors import Unauthorized
from gallery_common.telemetry import get_logger

if TYPE_CHECKING:  # httpx (and the CLI libraries it pulls in) loads only where a client is configured
    from gallery_common.service_identity import ClientCredentials

log = get_logger(__name__)
RETRY_S = 5.0  # how soon a failed renewal is tried again


class BackendIdentity:
    """The `Authorization` value of the gateway's calls to one kind of backend; `listeners` hear each new one."""

    def __init__(self, static_token: str | None = None, credentials: ClientCredentials | None = None) -> None:
        self.credentials = credentials
        self.header: str | None = None if credentials is not None or not static_token else f"Bearer {static_token}"
        self._listeners: list[Callable[[str], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._renewal: asyncio.Task[bool] | None = None

    @property
    def renewable(self) -> bool:
        return self.credentials is not None

    def on_change(self, listener: Callable[[str], None]) -> None:
        """Call `listener` with the header now (if there is one) and with every new one."""
        self._listeners.append(listener)
        if self.header is not None:
            listener(self.header)

    def _apply(self, token: str) -> bool:
        header = f"Bearer {token}"
        if header == self.header:
            return False
        self.header = header
        for listener in self._listeners:
            listener(header)
        return True

    def start(self) -> None:
        """Keep a client-credentials token fresh in the background (nothing to do for a static token)."""
        if self.credentials is not None and self._task is None:
            self._task = asyncio.create_task(self._keep(), name="gateway-identity")

    async def _keep(self) -> None:
        assert self.credentials is not None
        while True:
            try:
                self._apply(await self.credentials.atoken())
                delay = max(1.0, self.credentials.seconds_until_renewal())
            except Unauthorized as exc:
                log.warning("gateway identity: no token from the issuer", error=exc.message, retry_s=RETRY_S)
                delay = RETRY_S
            await asyncio.sleep(delay)

    async def renew(self) -> bool:
        """A backend refused the token: fetch another now (one fetch however many requests ask). True when
        the header changed, so the request is worth sending again."""
        if self.credentials is None:
            return False
        if self._renewal is None:
            credentials = self.credentials

            async def fetch() -> bool:
                credentials.forget()
                try:
                    return self._apply(await credentials.atoken())
                except Unauthorized as exc:
                    log.warning("gateway identity: renewal refused", error=exc.message)
                    return False

            self._renewal = asyncio.create_task(fetch())
            self._renewal.add_done_callback(lambda _: setattr(self, "_renewal", None))
        return await asyncio.shield(self._renewal)

    async def close(self) -> None:
        for task in (self._task, self._renewal):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
