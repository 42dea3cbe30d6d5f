"""A service's own identity on its calls: the static token, or client-credentials tokens renewed after
the callee refuses one; never nothing when a token is configured."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from gallery_common.service_identity import ClientCredentials, ServiceAuth, service_auth
from gallery_common.settings import GallerySettings


class IssuedTokens(ClientCredentials):
    """Client credentials whose issuer hands out `token-1`, `token-2`, ... (no HTTP)."""

    def __init__(self) -> None:
        super().__init__("https://login.example.test", "deployer", "secret")
        self.issued = 0
        self.current: str | None = None

    def token(self) -> str:
        if self.current is None:
            self.issued += 1
            self.current = f"token-{self.issued}"
        return self.current

    def forget(self) -> None:
        self.current = None


def callee(accepted: set[str], seen: list[str]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        sent = request.headers.get("authorization", "")
        seen.append(sent)
        return httpx.Response(200 if sent.removeprefix("Bearer ") in accepted else 401)

    return httpx.MockTransport(answer)


def test_a_refused_client_credentials_token_is_replaced_once() -> None:
    credentials, seen = IssuedTokens(), list[str]()
    with httpx.Client(transport=callee({"token-2"}, seen), auth=ServiceAuth(credentials=credentials)) as http:
        assert http.get("https://registry.test/api/v1/models").status_code == 200
        assert http.get("https://registry.test/api/v1/models").status_code == 200
    assert seen == ["Bearer token-1", "Bearer token-2", "Bearer token-2"]


async def test_the_async_flow_replaces_a_refused_token_too() -> None:
    credentials, seen = IssuedTokens(), list[str]()
    transport = httpx.MockTransport(callee({"token-2"}, seen).handler)
    async with httpx.AsyncClient(transport=transport, auth=ServiceAuth(credentials=credentials)) as http:
        assert (await http.get("https://registry.test/api/v1/models")).status_code == 200
    assert seen == ["Bearer token-1", "Bearer token-2"]


def test_a_token_the_issuer_keeps_refusing_ends_as_the_callees_401() -> None:
    credentials, seen = IssuedTokens(), list[str]()
    with httpx.Client(transport=callee(set(), seen), auth=ServiceAuth(credentials=credentials)) as http:
        assert http.get("https://registry.test/").status_code == 401
    assert len(seen) == 2  # one retry, not a loop


def test_service_auth_prefers_client_credentials_then_the_static_token() -> None:
    oidc = GallerySettings(
        oidc_issuer="https://login.example.test",
        oidc_audience="model-gallery",
        oidc_client_id="deployer",
        oidc_client_secret=SecretStr("s"),
    )
    chosen = service_auth(oidc, SecretStr("static"))
    assert chosen is not None and chosen.credentials is not None and chosen.credentials.client_id == "deployer"
    static = service_auth(GallerySettings(), SecretStr("static"))
    assert static is not None and static.static_token == "static" and static.credentials is None
    assert service_auth(GallerySettings(), None) is None
    with pytest.raises(ValueError, match="static token or client credentials"):
        ServiceAuth()
