"""Bearer-token auth: who a caller is, and what role each route needs.

The roles form a ladder, each including the ones below it: `inference` (infer, and read what a
model server serves), `reader` (every read), `writer` (register, upload, submit jobs, set tags) and
`admin` (what decides what serves: deploy, promote, roll back, scale, policies, status changes,
deletions, routes). A route declares the role it needs with `requires(role)` (or `AdminDep`);
without a declaration reads need `reader` and writes `writer`. `gallery_common.access` checks the
declaration before the request body is read; the dependencies here check it again when the route
runs. With no tokens configured every caller is admin, which is why such a service binds to
loopback only.

Besides the static tokens (`GALLERY_API_TOKENS`), a service with `GALLERY_OIDC_ISSUER` accepts that
issuer's signed JWTs (`gallery_common.oidc`): the caller is `oidc:<sub>` with the global role its
groups map to; the per-project roles the groups map to ride along in `Caller.projects` for projects
to enforce.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from fastapi import Depends, Request, params

from .errors import Forbidden, Unauthorized
from .settings import GallerySettings, Role

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# where AccessMiddleware leaves the caller it identified, for the route's dependencies
CALLER_SCOPE_KEY = "gallery.caller"
# attribute a plain (Starlette) endpoint carries to declare its role; None: no token needed
ROLE_ATTRIBUTE = "__gallery_role__"


@dataclass(frozen=True)
class Caller:
    """Who made a request: a stable name for audit trails and the role their token grants.

    `projects`: the roles an OIDC token's groups grant in single projects (`project:role` in
    GALLERY_OIDC_GROUP_ROLES), kept for project-scoped checks; `role` is the global one enforced today.
    """

    name: str
    role: Role
    projects: Mapping[str, Role] = field(default_factory=lambda: MappingProxyType({}))

    def can(self, role: Role) -> bool:
        return self.role.rank >= role.rank


ANONYMOUS_ADMIN = Caller(name="local", role=Role.admin)


def identify(settings: GallerySettings, authorization: str | None) -> Caller:
    """The caller behind an `Authorization: Bearer <token>` header; raise Unauthorized if unknown."""
    if not settings.auth_enabled:
        return ANONYMOUS_ADMIN
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    for known, role in settings.api_tokens.items():
        # constant-time comparison so a token cannot be guessed byte by byte from timings
        if hmac.compare_digest(known.encode(), token.encode()):
            return Caller(name=f"{role.value}-{hashlib.sha256(token.encode()).hexdigest()[:8]}", role=role)
    verifier = settings.token_verifier()
    if verifier is not None and verifier.looks_like_jwt(token):
        verified = verifier.verify(token)
        return Caller(name=verified.name, role=verifier.global_role(verified), projects=verified.projects)
    raise Unauthorized("unknown bearer token")


def required_role(method: str) -> Role:
    """The role a route that declares none needs: reads `reader`, writes `writer`."""
    return Role.reader if method.upper() in SAFE_METHODS else Role.writer


def check_role(caller: Caller, needed: Role) -> None:
    """Forbidden unless `caller` holds `needed` (or a role above it)."""
    if not caller.can(needed):
        raise Forbidden(f"this request needs the {needed.value} role; your token has {caller.role.value}")


class RoleRequirement:
    """A route dependency: the request needs `role` (None: no token at all).

    `AccessMiddleware` finds it among a route's dependencies and checks it before the body is read;
    when the route runs it checks again, so a route the middleware does not know is still guarded.
    """

    def __init__(self, role: Role | None) -> None:
        self.role = role

    async def __call__(self, request: Request) -> Caller | None:
        if self.role is None:
            return None  # open to anyone: there is no caller to speak of
        caller = await authorize(request)
        check_role(caller, self.role)
        return caller

    def __repr__(self) -> str:
        return f"RoleRequirement({self.role.value if self.role else 'public'})"


def requires(role: Role | None) -> params.Depends:
    """`dependencies=[requires(Role.admin)]` on a route or router: the role its requests need."""
    return Depends(RoleRequirement(role))


E = TypeVar("E", bound=Callable[..., Any])


def public(endpoint: E) -> E:
    """Mark a plain Starlette endpoint as answering without a token (a page a browser loads)."""
    setattr(endpoint, ROLE_ATTRIBUTE, None)
    return endpoint


async def authorize(request: Request) -> Caller:
    """The caller `AccessMiddleware` identified; in an app without it, identify and check here.

    Async although it does no I/O, so FastAPI runs it inline instead of in its thread pool.
    """
    caller: Caller | None = request.scope.get(CALLER_SCOPE_KEY)
    if caller is not None:
        return caller
    settings: GallerySettings = request.app.state.settings
    if request.url.path in OPEN_PATHS:
        return ANONYMOUS_ADMIN
    caller = identify(settings, request.headers.get("authorization"))
    check_role(caller, required_role(request.method))
    request.scope[CALLER_SCOPE_KEY] = caller
    return caller


# Route dependency for admin-only operations (protected aliases, deletions of record).
require_admin = RoleRequirement(Role.admin)
