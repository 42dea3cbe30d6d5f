"""Single sign-on for the Gallery: the OpenID Connect authorization-code flow with PKCE.

With `GALLERY_OIDC_ISSUER` and `GALLERY_OIDC_CLIENT_ID` set, `/auth/login` sends the browser to the
issuer's login with a fresh `state`, `nonce` and PKCE challenge (S256); `/auth/callback` checks the
state against the browser's login cookie, exchanges the code and the verifier for the tokens at the
issuer's token endpoint, checks the id token (signature, issuer, audience = this client, nonce) and
the access token (the check every service makes), and keeps them server-side under a random session
id, the only thing the browser holds (cookie `gallery_session`: HttpOnly, SameSite=Lax, Secure on
https). `/auth/logout` forgets the session.

`SessionBearer` (middleware in front of the access checks) turns a live session into the
`Authorization: Bearer <access token>` of each request, so the Gallery's own check, its aggregations
and its proxy carry the person's token to each service as a pasted token would. A write (any method
but GET/HEAD/OPTIONS) gets the token only when its `Origin` is the Gallery's own: another site can
make a browser send the cookie, never set that header.

Sessions live in this process: a restart signs everyone out, and several replicas need sticky
sessions. A session ends when its access token expires; the next call answers 401 and the page
sends the browser through the issuer again (silently, while the issuer's own session lasts).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import anyio
import httpx
import jwt
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gallery_common.auth import SAFE_METHODS, public
from gallery_common.errors import BadRequest, NotFound, Unauthorized, Unavailable
from gallery_common.oidc import DISCOVERY_PATH, TokenVerifier

from .settings import GalleryWebSettings

SESSION_COOKIE = "gallery_session"
LOGIN_COOKIE = "gallery_login"
LOGIN_TTL_S = 600.0
MAX_PENDING_LOGINS = 10_000
MAX_SESSIONS = 100_000


@dataclass(frozen=True)
class Session:
    """A signed-in person: the tokens the issuer gave, kept here, never in the browser."""

    name: str
    access_token: str
    id_token: str | None
    expires_at: float


@dataclass(frozen=True)
class PendingLogin:
    verifier: str
    nonce: str
    next_path: str
    redirect_uri: str
    started: float


class SessionStore:
    """Sessions by id and logins under way by state, both bounded (the oldest go first)."""

    def __init__(self) -> None:
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._pending: OrderedDict[str, PendingLogin] = OrderedDict()

    def start_login(self, login: PendingLogin) -> str:
        state = secrets.token_urlsafe(24)
        self._pending[state] = login
        while len(self._pending) > MAX_PENDING_LOGINS:
            self._pending.popitem(last=False)
        return state

    def finish_login(self, state: str) -> PendingLogin | None:
        login = self._pending.pop(state, None)
        if login is None or time.time() - login.started > LOGIN_TTL_S:
            return None
        return login

    def open(self, session: Session) -> str:
        session_id = secrets.token_urlsafe(32)
        self._sessions[session_id] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session_id

    def get(self, session_id: str) -> Session | None:
        session = self._sessions.get(session_id)
        if session is not None and session.expires_at <= time.time():
            del self._sessions[session_id]
            return None
        return session

    def close(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)


def _cookie(scope: Scope, name: str) -> str | None:
    for key, value in scope["headers"]:
        if key == b"cookie":
            for part in value.decode("latin-1").split(";"):
                cookie, _, content = part.strip().partition("=")
                if cookie == name:
                    return content
    return None


def _same_origin(scope: Scope, public_host: str | None) -> bool:
    """Whether the request's Origin is this Gallery: the Host it was sent to, or GALLERY_PUBLIC_URL's."""
    headers = dict(scope["headers"])
    origin, host = headers.get(b"origin"), headers.get(b"host")
    if origin is None:
        return False
    sender = urlsplit(origin.decode("latin-1")).netloc
    return sender == public_host or (host is not None and sender == host.decode("latin-1"))


class SessionBearer:
    """Give a request from a signed-in browser the session's bearer token (see the module's docstring)."""

    def __init__(self, app: ASGIApp, sessions: SessionStore, public_url: str | None = None) -> None:
        self.app = app
        self.sessions = sessions
        self.public_host = urlsplit(public_url).netloc if public_url else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not any(k == b"authorization" for k, _ in scope["headers"]):
            session_id = _cookie(scope, SESSION_COOKIE)
            session = self.sessions.get(session_id) if session_id else None
            if session is not None and (scope["method"] in SAFE_METHODS or _same_origin(scope, self.public_host)):
                scope = dict(scope)
                scope["headers"] = [*scope["headers"], (b"authorization", f"Bearer {session.access_token}".encode())]
        await self.app(scope, receive, send)


@dataclass
class IssuerEndpoints:
    authorization: str
    token: str
    end_session: str | None


class SignIn:
    """The Gallery's relying-party side of the issuer: where to send people, and what comes back."""

    def __init__(self, settings: GalleryWebSettings, sessions: SessionStore) -> None:
        assert settings.oidc_issuer is not None and settings.oidc_client_id is not None
        verifier = settings.token_verifier()
        assert verifier is not None
        self.settings = settings
        self.sessions = sessions
        self.verifier: TokenVerifier = verifier
        self.issuer = settings.oidc_issuer
        self.client_id = settings.oidc_client_id
        self._endpoints: IssuerEndpoints | None = None

    async def endpoints(self) -> IssuerEndpoints:
        if self._endpoints is None:
            try:
                async with httpx.AsyncClient(timeout=10.0) as http:
                    answer = await http.get(self.issuer.rstrip("/") + DISCOVERY_PATH)
                    answer.raise_for_status()
                    document = answer.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise Unavailable(f"the identity provider {self.issuer} does not answer its discovery: {exc}") from None
            self._endpoints = IssuerEndpoints(
                authorization=document["authorization_endpoint"],
                token=document["token_endpoint"],
                end_session=document.get("end_session_endpoint"),
            )
        return self._endpoints

    def redirect_uri(self, request: Request) -> str:
        base = self.settings.public_url or str(request.base_url).rstrip("/")
        return f"{base}/auth/callback"

    def _secure(self, request: Request) -> bool:
        return (self.settings.public_url or str(request.base_url)).startswith("https://")

    async def login(self, request: Request) -> Response:
        next_path = request.query_params.get("next", "/")
        if not next_path.startswith("/") or next_path.startswith("//"):
            next_path = "/"  # only a path of this Gallery: never an open redirect
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        redirect_uri = self.redirect_uri(request)
        pending = PendingLogin(verifier, secrets.token_urlsafe(16), next_path, redirect_uri, time.time())
        state = self.sessions.start_login(pending)
        scope = " ".join(filter(None, ["openid profile", self.settings.oidc_client_scope]))
        query = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
            "state": state,
            "nonce": pending.nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        endpoints = await self.endpoints()
        response = RedirectResponse(f"{endpoints.authorization}?{urlencode(query)}", status_code=303)
        response.set_cookie(
            LOGIN_COOKIE,
            state,
            max_age=int(LOGIN_TTL_S),
            httponly=True,
            samesite="lax",
            secure=self._secure(request),
            path="/auth",
        )
        return response

    async def callback(self, request: Request) -> Response:
        params = request.query_params
        if "error" in params:
            raise Unauthorized(
                f"the identity provider refused the sign-in: {params.get('error_description') or params['error']}"
            )
        state, code = params.get("state"), params.get("code")
        if not state or not code:
            raise BadRequest("the sign-in callback needs the 'state' and 'code' the identity provider sends")
        if request.cookies.get(LOGIN_COOKIE) != state:
            raise Unauthorized("this sign-in was not started in this browser (its state does not match): sign in again")
        pending = self.sessions.finish_login(state)
        if pending is None:
            raise Unauthorized("this sign-in is unknown or took over 10 minutes: sign in again")
        tokens = await self._exchange(code, pending)
        access_token = tokens.get("access_token")
        if not isinstance(access_token, str):
            raise Unauthorized("the identity provider answered no access token")
        id_token = tokens.get("id_token")
        if isinstance(id_token, str):
            # blocking at worst once: the issuer's keys are fetched on first use
            await anyio.to_thread.run_sync(self._check_id_token, id_token, pending.nonce)
        verified = await anyio.to_thread.run_sync(self.verifier.verify, access_token)  # as each service will
        session_id = self.sessions.open(Session(verified.name, access_token, id_token, verified.expires_at))
        response = RedirectResponse(pending.next_path, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session_id,
            max_age=max(1, int(verified.expires_at - time.time())),
            httponly=True,
            samesite="lax",
            secure=self._secure(request),
            path="/",
        )
        response.delete_cookie(LOGIN_COOKIE, path="/auth")
        return response

    async def _exchange(self, code: str, pending: PendingLogin) -> dict[str, Any]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": pending.redirect_uri,
            "client_id": self.client_id,
            "code_verifier": pending.verifier,
        }
        secret = self.settings.oidc_client_secret
        auth = (self.client_id, secret.get_secret_value()) if secret is not None else None
        endpoints = await self.endpoints()
        try:
            async with httpx.AsyncClient(timeout=10.0) as http:
                if auth is not None:
                    answer = await http.post(endpoints.token, data=form, auth=auth)
                else:  # a public client: the PKCE verifier is its proof
                    answer = await http.post(endpoints.token, data=form)
        except httpx.HTTPError as exc:
            raise Unavailable(f"the identity provider's token endpoint does not answer: {exc}") from None
        if answer.status_code != 200:
            raise Unauthorized(
                f"the identity provider refused the code (HTTP {answer.status_code}): {answer.text[:200]}"
            )
        body = answer.json()
        if not isinstance(body, dict):
            raise Unauthorized("the identity provider's token answer is not a JSON object")
        return body

    def _check_id_token(self, id_token: str, nonce: str) -> None:
        try:
            header = jwt.get_unverified_header(id_token)
            key = self.verifier.keys.key(str(header.get("kid")))
            claims = jwt.decode(
                id_token,
                key=key,
                algorithms=list(self.verifier.config.algorithms),
                audience=self.client_id,
                issuer=self.issuer,
                leeway=self.verifier.config.clock_skew_s,
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"the identity provider's id token does not verify: {exc}") from None
        if claims.get("nonce") != nonce:
            raise Unauthorized("the id token's nonce is not this sign-in's: sign in again")

    def session_of(self, request: Request) -> Session | None:
        session_id = request.cookies.get(SESSION_COOKIE)
        return self.sessions.get(session_id) if session_id else None

    async def logout(self, request: Request) -> Response:
        session_id = request.cookies.get(SESSION_COOKIE)
        if session_id:
            self.sessions.close(session_id)
        response = JSONResponse({"signed_in": False})
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response


def sign_in_router(settings: GalleryWebSettings, sessions: SessionStore) -> APIRouter:
    """`/auth/...`: login, callback, logout and who is signed in (`{"sso": false}` without an issuer)."""
    router = APIRouter()
    sign_in = SignIn(settings, sessions) if settings.sign_in_enabled else None

    def needed() -> SignIn:
        if sign_in is None:
            raise NotFound("single sign-on is not configured: set GALLERY_OIDC_ISSUER and GALLERY_OIDC_CLIENT_ID")
        return sign_in

    @public
    async def login(request: Request) -> Response:
        """Send the browser to the identity provider's login."""
        return await needed().login(request)

    @public
    async def callback(request: Request) -> Response:
        """Where the identity provider sends the browser back with a code."""
        return await needed().callback(request)

    @public
    async def logout(request: Request) -> Response:
        """Forget this browser's session."""
        return await needed().logout(request)

    @public
    async def session(request: Request) -> Response:
        """Whether single sign-on is on, and who this browser is signed in as."""
        if sign_in is None:
            return JSONResponse({"sso": False, "signed_in": False})
        current = sign_in.session_of(request)
        return JSONResponse(
            {"sso": True, "signed_in": current is not None, "name": current.name if current else None},
            headers={"Cache-Control": "no-store"},
        )

    router.add_route("/auth/login", login, methods=["GET"], include_in_schema=False)
    router.add_route("/auth/callback", callback, methods=["GET"], include_in_schema=False)
    router.add_route("/auth/logout", logout, methods=["POST"], include_in_schema=False)
    router.add_route("/auth/session", session, methods=["GET"], include_in_schema=False)
    return router
