"""An OpenID Connect provider for the identity tests, built on Authlib's authorization server.

What a real single sign-on offers a relying party, with its standard endpoints:

- discovery (`/.well-known/openid-configuration`) and the signing keys (`/jwks`), an RSA key
  generated at start (`POST /test/rotate-key` adds a new one and signs with it from then on, as an
  issuer does when it rotates);
- the authorization-code flow with PKCE (S256 required for public clients) behind a login form
  (`/authorize`), OpenID Connect id tokens, and RFC 9068 JWT access tokens carrying `groups` and
  `preferred_username`, with the audience the relying parties expect;
- the client-credentials grant for services (`sub` is the client id, `groups` the client's);
- refresh tokens for clients that list the `refresh_token` grant, rotated on each use (the old one is
  refused from then on); `POST /test/revoke-refresh-tokens` with `username` revokes all of a user's, as
  an administrator or a sign-out elsewhere would.

Users, clients and the audience come from a JSON file: `python tests/oidc_provider.py CONFIG PORT`.
`running_provider(...)` starts it as a process on a free port and stops it after the block.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

ROOT = Path(__file__).resolve().parent


@dataclass
class User:
    username: str
    password: str
    groups: list[str]
    sub: str = ""

    def get_user_id(self) -> str:
        return self.sub or f"user-{self.username}"


@dataclass
class Client:
    """A registered relying party: confidential (a secret) or public (PKCE only)."""

    client_id: str
    client_secret: str | None = None
    redirect_uris: list[str] = field(default_factory=list)
    grant_types: list[str] = field(default_factory=lambda: ["authorization_code"])
    groups: list[str] = field(default_factory=list)  # what a client-credentials token of it carries
    audience: str | None = None  # the aud of its access tokens when not the provider's default

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope: str) -> str:
        allowed = {"openid", "profile", "email", "groups"}
        return " ".join(s for s in (scope or "").split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        if redirect_uri in self.redirect_uris:
            return True
        # RFC 8252 7.3: a native app's loopback redirect may come on any port
        url = urlsplit(redirect_uri)
        if url.scheme == "http" and url.hostname == "127.0.0.1":
            return url._replace(netloc="127.0.0.1").geturl() in self.redirect_uris
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return self.client_secret is not None and secrets.compare_digest(self.client_secret, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if endpoint != "token":
            return True
        if self.client_secret is None:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass
class AuthorizationCode:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: User
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int = field(default_factory=lambda: int(time.time()))
    expires_at: float = field(default_factory=lambda: time.time() + 120)

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None

    def is_expired(self) -> bool:
        return time.time() > self.expires_at


@dataclass
class RefreshToken:
    client_id: str
    user: User
    scope: str
    revoked: bool = False

    def check_client(self, client: Client) -> bool:
        return client.client_id == self.client_id

    def get_scope(self) -> str:
        return self.scope


def create_provider(config: dict[str, Any], issuer: str) -> Any:
    """The Flask app of the provider (Authlib's `AuthorizationServer` over in-memory users and clients)."""
    from authlib.integrations.flask_oauth2 import AuthorizationServer
    from authlib.jose import JsonWebKey
    from authlib.oauth2.rfc6749 import grants
    from authlib.oauth2.rfc7636 import CodeChallenge
    from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
    from authlib.oidc.core import UserInfo
    from authlib.oidc.core.grants import OpenIDCode
    from flask import Flask, Response, jsonify, request

    users = {u["username"]: User(**u) for u in config["users"]}
    clients = {c["client_id"]: Client(**c) for c in config["clients"]}
    audience: str = config["audience"]
    access_token_lifetime = int(config.get("access_token_lifetime_s", 600))
    codes: dict[str, AuthorizationCode] = {}
    refresh_tokens: dict[str, RefreshToken] = {}
    keys: list[Any] = []

    def new_key() -> None:
        key = JsonWebKey.generate_key("RSA", 2048, is_private=True)
        kid = f"key-{len(keys) + 1}-{secrets.token_hex(4)}"
        keys.append(JsonWebKey.import_key(key.as_dict(is_private=True), {"kid": kid, "use": "sig", "alg": "RS256"}))

    new_key()

    def signing_key() -> dict[str, Any]:
        return dict(keys[-1].as_dict(is_private=True))

    def user_claims(user: User | None, client: Client) -> dict[str, Any]:
        if user is None:
            return {"groups": client.groups, "client_id": client.client_id}
        return {"groups": user.groups, "preferred_username": user.username, "client_id": client.client_id}

    class AccessTokens(JWTBearerTokenGenerator):  # type: ignore[misc]
        def get_jwks(self) -> dict[str, Any]:
            return {"keys": [signing_key()]}

        def get_audiences(self, client: Client, user: User | None, scope: str) -> str:
            return client.audience or audience

        def get_extra_claims(self, client: Client, grant_type: str, user: User | None, scope: str) -> dict[str, Any]:
            return user_claims(user, client)

    class CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

        def save_authorization_code(self, code: str, request: Any) -> None:
            payload = request.payload
            codes[code] = AuthorizationCode(
                code=code,
                client_id=request.client.client_id,
                redirect_uri=payload.redirect_uri,
                scope=payload.scope,
                user=request.user,
                nonce=payload.data.get("nonce"),
                code_challenge=payload.data.get("code_challenge"),
                code_challenge_method=payload.data.get("code_challenge_method"),
            )

        def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
            found = codes.get(code)
            if found is not None and found.client_id == client.client_id and not found.is_expired():
                return found
            return None

        def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
            codes.pop(authorization_code.code, None)

        def authenticate_user(self, authorization_code: AuthorizationCode) -> User:
            return authorization_code.user

    class IdTokens(OpenIDCode):  # type: ignore[misc]
        def resolve_client_private_key(self, client: Client) -> dict[str, Any]:
            return signing_key()

        def get_client_algorithm(self, client: Client) -> str:
            return "RS256"

        def get_encode_header(self, client: Client) -> dict[str, str]:
            return {"alg": "RS256", "kid": signing_key()["kid"]}

        def get_client_claims(self, client: Client) -> dict[str, Any]:
            now = int(time.time())
            return {"iss": issuer, "aud": [client.client_id], "iat": now, "exp": now + 3600}

        def exists_nonce(self, nonce: str, request: Any) -> bool:
            return any(c.nonce == nonce for c in codes.values() if c.client_id == request.payload.client_id)

        def generate_user_info(self, user: User, scope: str) -> UserInfo:
            return UserInfo(sub=user.get_user_id(), preferred_username=user.username, groups=user.groups)

    class ServiceGrant(grants.ClientCredentialsGrant):  # type: ignore[misc]
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    class RefreshGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
        INCLUDE_NEW_REFRESH_TOKEN = True  # rotation: each refresh token serves once

        def authenticate_refresh_token(self, refresh_token: str) -> RefreshToken | None:
            found = refresh_tokens.get(refresh_token)
            return None if found is None or found.revoked else found

        def authenticate_user(self, refresh_token: RefreshToken) -> User:
            return refresh_token.user

        def revoke_old_credential(self, refresh_token: RefreshToken) -> None:
            refresh_token.revoked = True

    def save_token(token: dict[str, Any], request: Any) -> None:
        if "refresh_token" in token and request.user is not None:
            refresh_tokens[token["refresh_token"]] = RefreshToken(
                request.client.client_id, request.user, token.get("scope", "")
            )

    app = Flask("oidc_provider")
    server = AuthorizationServer(app, query_client=clients.get, save_token=save_token)
    server.register_token_generator(
        "default",
        AccessTokens(
            issuer,
            refresh_token_generator=lambda **_: secrets.token_urlsafe(32),
            expires_generator=lambda *_: access_token_lifetime,
        ),
    )
    server.register_grant(CodeGrant, [CodeChallenge(required=True), IdTokens(require_nonce=False)])
    server.register_grant(ServiceGrant)
    server.register_grant(RefreshGrant)

    @app.get("/.well-known/openid-configuration")
    def discovery() -> Response:
        return jsonify(
            issuer=issuer,
            authorization_endpoint=f"{issuer}/authorize",
            token_endpoint=f"{issuer}/token",
            jwks_uri=f"{issuer}/jwks",
            response_types_supported=["code"],
            grant_types_supported=["authorization_code", "client_credentials", "refresh_token"],
            subject_types_supported=["public"],
            id_token_signing_alg_values_supported=["RS256"],
            token_endpoint_auth_methods_supported=["client_secret_basic", "client_secret_post", "none"],
            code_challenge_methods_supported=["S256"],
            scopes_supported=["openid", "profile", "groups"],
            claims_supported=["sub", "iss", "aud", "exp", "iat", "preferred_username", "groups"],
        )

    @app.get("/jwks")
    def jwks() -> Response:
        return jsonify(keys=[k.as_dict(is_private=False) for k in keys])

    @app.post("/test/rotate-key")
    def rotate() -> Response:
        new_key()
        return jsonify(kid=signing_key()["kid"])

    @app.post("/test/revoke-refresh-tokens")
    def revoke_refresh_tokens() -> Response:
        username = request.form["username"]
        revoked = [t for t in refresh_tokens.values() if t.user.username == username and not t.revoked]
        for token in revoked:
            token.revoked = True
        return jsonify(revoked=len(revoked))

    def login_form(error: str = "") -> str:
        # the authorization request stays in the query string; the form adds only the credentials
        return (
            "<!doctype html><title>Sign in</title><h1>Test identity provider</h1>"
            f'<p id="error">{escape(error)}</p>'
            f'<form method="post" action="/authorize?{escape(request.query_string.decode())}">'
            '<label>User <input id="username" name="username"></label>'
            '<label>Password <input id="password" name="password" type="password"></label>'
            '<button id="sign-in" type="submit">Sign in</button></form>'
        )

    @app.route("/authorize", methods=["GET", "POST"])
    def authorize() -> Any:
        if request.method == "GET":
            try:
                server.get_consent_grant(end_user=None)
            except Exception as exc:
                return Response(f"invalid authorization request: {exc}", status=400)
            return login_form()
        user = users.get(request.form.get("username", ""))
        if user is None or not secrets.compare_digest(user.password, request.form.get("password", "")):
            return Response(login_form("wrong user name or password"), status=401)
        return server.create_authorization_response(grant_user=user)

    @app.post("/token")
    def token() -> Any:
        return server.create_token_response()

    return app


def main() -> None:
    config_path, port = Path(sys.argv[1]), int(sys.argv[2])
    config = json.loads(config_path.read_text())
    issuer = f"http://127.0.0.1:{port}"
    create_provider(config, issuer).run(host="127.0.0.1", port=port, threaded=True)


@dataclass
class RunningProvider:
    issuer: str
    audience: str

    def client_credentials_token(self, client_id: str, client_secret: str) -> str:
        answer = httpx.post(
            f"{self.issuer}/token", data={"grant_type": "client_credentials"}, auth=(client_id, client_secret)
        )
        answer.raise_for_status()
        return str(answer.json()["access_token"])

    def sign_in(self, username: str, password: str, client_id: str, redirect_uri: str) -> dict[str, Any]:
        """The authorization-code flow with PKCE as a browser and a public client walk it: the login
        form, the redirect with the code, the code and verifier exchanged for the tokens."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        query = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": "openid profile",
            "state": secrets.token_urlsafe(8),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        login = httpx.post(f"{self.issuer}/authorize", params=query, data={"username": username, "password": password})
        assert login.status_code == 302, login.text
        code = parse_qs(urlsplit(login.headers["location"]).query)["code"][0]
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": client_id,
            "code_verifier": verifier,
        }
        answer = httpx.post(f"{self.issuer}/token", data=form)
        answer.raise_for_status()
        return dict(answer.json())

    def rotate_key(self) -> str:
        return str(httpx.post(f"{self.issuer}/test/rotate-key").json()["kid"])

    def revoke_refresh_tokens(self, username: str) -> int:
        return int(
            httpx.post(f"{self.issuer}/test/revoke-refresh-tokens", data={"username": username}).json()["revoked"]
        )


@contextmanager
def running_provider(
    workdir: Path,
    users: list[dict[str, Any]],
    clients: list[dict[str, Any]],
    audience: str = "model-gallery",
    access_token_lifetime_s: int = 600,
) -> Iterator[RunningProvider]:
    """The provider as a process on a free loopback port, up when the block starts, stopped after it."""
    from waiting import wait_for

    from gallery_common.netutil import free_port

    port = free_port()
    config = workdir / "oidc-provider.json"
    config.write_text(
        json.dumps(
            {
                "users": users,
                "clients": clients,
                "audience": audience,
                "access_token_lifetime_s": access_token_lifetime_s,
            }
        )
    )
    log = (workdir / "oidc-provider.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "oidc_provider.py"), str(config), str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    issuer = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            "the OIDC provider's discovery document",
            lambda: httpx.get(issuer + "/.well-known/openid-configuration").status_code == 200,
            timeout=30,
            ignore=(httpx.HTTPError,),
        )
        yield RunningProvider(issuer=issuer, audience=audience)
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


if __name__ == "__main__":
    main()
