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

Sessions and sign-ins under way live in NATS, sealed (`sessions`): any replica answers any step, and a
restart signs no one out. When the issuer gave a refresh token, an access token within 30 s of its
expiry is renewed before the request goes on (one renewal per session at a time on a replica; when two
replicas find it due, one renews it and the other goes on with the token in hand), until the session's end
(`GALLERY_SESSION_MAX_AGE_S`, default 12 h) or until the issuer refuses the refresh token; without one a
session ends with its access token. Then the next call answers 401 and the page sends the browser
through the issuer again (silently, while the issuer's own session lasts).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, replace
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
from gallery_common.oidc import DISCOVERY_PATH, TokenVerifier, VerifiedToken
from gallery_common.sessions_kv import LOGIN_TTL_S
from gallery_common.telemetry import get_logger

from .sessions import PendingLogin, Session, SessionStore
from .settings import GalleryWebSettings

SESSION_COOKIE = "gallery_session"
LOGIN_COOKIE = "gallery_login"
SESSION_PATHS = ("/api/", "/auth/")  # what a session's token is for (pages and their assets are public)
REFRESH_AHEAD_S = 30.0  # an access token this close to its expiry is renewed before it is passed on
RENEWAL_CLAIM_S = 15.0  # how long a replica's claim to renew a session holds: the token endpoint's 10 s limit and more
log = get_logger(__name__)


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
    """Give a request from a signed-in browser the session's bearer token (see the module's docstring); while
    the sessions cannot be read (NATS away), such a request to the API or sign-in gets 503 saying so."""

    def __init__(self, app: ASGIApp, sign_in: SignIn, public_url: str | None = None) -> None:
        self.app = app
        self.sign_in = sign_in
        self.public_host = urlsplit(public_url).netloc if public_url else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not any(k == b"authorization" for k, _ in scope["headers"]):
            session_id = _cookie(scope, SESSION_COOKIE)
            if session_id and (scope["method"] in SAFE_METHODS or _same_origin(scope, self.public_host)):
                try:
                    session = await self.sign_in.current(session_id)
                except Unavailable as exc:
                    if scope["path"].startswith(SESSION_PATHS):
                        await JSONResponse({"error": exc.message}, status_code=503)(scope, receive, send)
                        return
                    session = None  # a page or its assets: served as to anyone; its API calls say why
                if session is not None:
                    scope = dict(scope)
                    bearer = f"Bearer {session.access_token}".encode()
                    scope["headers"] = [*scope["headers"], (b"authorization", bearer)]
        await self.app(scope, receive, send)


@dataclass
class IssuerEndpoints:
    authorization: str
    token: str
    end_session: str | None


class SignIn:
    """The Gallery's relying-party side of the issuer: where to send people, and what comes back."""

    def __init__(self, settings: GalleryWebSettings) -> None:
        assert settings.oidc_issuer is not None and settings.oidc_client_id is not None
        verifier = settings.token_verifier()
        assert verifier is not None
        self.settings = settings
        self.verifier: TokenVerifier = verifier
        self.issuer = settings.oidc_issuer
        self.client_id = settings.oidc_client_id
        self._endpoints: IssuerEndpoints | None = None
        self._store: SessionStore | None = None
        self._renewals: dict[str, asyncio.Task[Session | None]] = {}

    def _expiry(self, verified: VerifiedToken) -> float:
        """The access token's own `exp` (the services accept it until clock skew later; the Gallery renews
        it before)."""
        return verified.expires_at - self.verifier.config.clock_skew_s

    def bind(self, store: SessionStore) -> None:
        """Where sessions live, once the app has started (its bus)."""
        self._store = store

    @property
    def sessions(self) -> SessionStore:
        if self._store is None:
            raise Unavailable("sign-in is unavailable: the Gallery is not started yet")
        return self._store

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
        state = await self.sessions.start_login(pending)
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
        pending = await self.sessions.finish_login(state)
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
        refresh_token = tokens.get("refresh_token")
        session = Session(
            verified.name,
            access_token,
            id_token if isinstance(id_token, str) else None,
            self._expiry(verified),
            refresh_token if isinstance(refresh_token, str) else None,
            ends_at=time.time() + self.settings.session_max_age_s,
        )
        session_id = await self.sessions.open(session)
        # the browser keeps the cookie as long as the session can last: to its end when it can be renewed
        lasts_until = session.ends_at if session.refresh_token else min(session.ends_at, session.expires_at)
        response = RedirectResponse(pending.next_path, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session_id,
            max_age=max(1, int(lasts_until - time.time())),
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
        return await self._token_request(form, "the code")

    async def _token_request(self, form: dict[str, str], what: str) -> dict[str, Any]:
        """POST `form` to the issuer's token endpoint (as this client); its JSON answer. Unauthorized when it
        refuses `what`, Unavailable when it does not answer."""
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
            raise Unauthorized(f"the identity provider refused {what} (HTTP {answer.status_code}): {answer.text[:200]}")
        try:
            body = answer.json()
        except ValueError:
            body = None
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

    async def current(self, session_id: str) -> Session | None:
        """The session of this cookie with an access token good for the next 30 s (renewed when it can be);
        None when there is none, or it ended."""
        found = await self.sessions.get(session_id)
        if found is None:
            return None
        session, _ = found
        now = time.time()
        if session.refresh_token is None or session.expires_at - now > REFRESH_AHEAD_S:
            return session if session.expires_at > now else None
        renewal = self._renewals.get(session_id)
        if renewal is None:  # one renewal per session on this replica; its other requests wait for it
            renewal = self._renewals[session_id] = asyncio.create_task(self._renew(session_id))
            renewal.add_done_callback(lambda _: self._renewals.pop(session_id, None))
        return await asyncio.shield(renewal)

    async def _renew(self, session_id: str) -> Session | None:
        """Renew the session's access token with its refresh token, once across replicas: the replica whose
        claim is written sends the refresh token; another one goes on with the token in hand, or, when that
        has expired, waits for the renewed one."""
        waited_until = time.monotonic() + RENEWAL_CLAIM_S
        while True:
            found = await self.sessions.get(session_id)  # as it is now: another replica may have renewed it
            if found is None:
                return None
            session, revision = found
            now = time.time()
            if session.expires_at - now > REFRESH_AHEAD_S or session.refresh_token is None:
                return session if session.expires_at > now else None
            if session.renewing_until <= now:
                claim = replace(session, renewing_until=now + RENEWAL_CLAIM_S)
                claimed = await self.sessions.replace(session_id, claim, revision)
                if claimed is not None:
                    return await self._refresh(session_id, claim, claimed)
            elif session.expires_at > now:
                return session  # another replica renews it; this token still serves
            if time.monotonic() > waited_until:
                return None
            await asyncio.sleep(0.1)

    async def _refresh(self, session_id: str, session: Session, revision: int) -> Session | None:
        assert session.refresh_token is not None
        form = {"grant_type": "refresh_token", "refresh_token": session.refresh_token, "client_id": self.client_id}
        try:
            tokens = await self._token_request(form, "the refresh token")
            access_token = tokens.get("access_token")
            if not isinstance(access_token, str):
                raise Unauthorized("the identity provider answered no access token")
            verified = await anyio.to_thread.run_sync(self.verifier.verify, access_token)
            if verified.name != session.name:
                raise Unauthorized(f"the renewed token names {verified.name}, not {session.name}")
        except Unavailable as exc:  # the issuer is away: the token in hand serves while it lasts
            log.warning("session renewal failed", error=exc.message)
            return session if session.expires_at > time.time() else None
        except Unauthorized as exc:
            log.info("session ended: its renewal was refused", session=session.name, reason=exc.message)
            await self.sessions.close(session_id)
            return None
        refresh_token, id_token = tokens.get("refresh_token"), tokens.get("id_token")
        renewed = replace(
            session,
            access_token=access_token,
            expires_at=self._expiry(verified),
            refresh_token=refresh_token if isinstance(refresh_token, str) else session.refresh_token,
            id_token=id_token if isinstance(id_token, str) else session.id_token,
            renewing_until=0.0,
        )
        if await self.sessions.replace(session_id, renewed, revision) is None:
            return None  # signed out while it was renewed
        return renewed

    async def logout(self, request: Request) -> Response:
        session_id = request.cookies.get(SESSION_COOKIE)
        if session_id:
            await self.sessions.close(session_id)
        response = JSONResponse({"signed_in": False})
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response


def sign_in_router(sign_in: SignIn | None) -> APIRouter:
    """`/auth/...`: login, callback, logout and who is signed in (`{"sso": false}` without an issuer)."""
    router = APIRouter()

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
        session_id = request.cookies.get(SESSION_COOKIE)
        current = await sign_in.current(session_id) if session_id else None
        return JSONResponse(
            {"sso": True, "signed_in": current is not None, "name": current.name if current else None},
            headers={"Cache-Control": "no-store"},
        )

    router.add_route("/auth/login", login, methods=["GET"], include_in_schema=False)
    router.add_route("/auth/callback", callback, methods=["GET"], include_in_schema=False)
    router.add_route("/auth/logout", logout, methods=["POST"], include_in_schema=False)
    router.add_route("/auth/session", session, methods=["GET"], include_in_schema=False)
    return router
