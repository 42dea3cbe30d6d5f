"""Bearer-token auth: who a caller is, and what role each route needs.

The roles form a ladder, each including the ones below it: `inference` (infer, and read what a
model server serves), `reader` (every read), `writer` (register, upload, submit jobs, set tags) and
`admin` (what decides what serves: deploy, promote, roll back, scale, policies, status changes,
deletions, routes). A route declares the role it needs with `requires(role)` (or `AdminDep`);
without a declaration reads need `reader` and writes `writer`. `gallery_common.access` checks the
declaration before the request body is read; the dependencies here check it again when the route
runs. With no tokens configured every caller is admin, which is why such a service binds to
loopback only.

Besides the static tokens (`GALLERY_API_TOKENS`, `token:role` installation-wide or
`token:project:role`), a service with `GALLERY_OIDC_ISSUER` accepts that issuer's signed JWTs
(`gallery_common.oidc`): the caller is `oidc:<sub>` with the roles its groups map to. The route-level
check here asks whether the caller holds the route's role anywhere; which project a request touches,
and the caller's role there, is checked by the route with `gallery_common.projects.authorize_in`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

# Starlette's Request is FastAPI's; FastAPI itself loads only where a route asks for `requires` (a model
# server, built on Starlette alone, starts without it)
from starlette.requests import Request

from .errors import Forbidden, Unauthorized
from .projects import highest
from .settings import GallerySettings, Role

if TYPE_CHECKING:
    from fastapi import params

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# where AccessMiddleware leaves the caller it identified, for the route's dependencies
CALLER_SCOPE_KEY = "gallery.caller"
# attribute a plain (Starlette) endpoint carries to declare its role; None: no token needed
ROLE_ATTRIBUTE = "__gallery_role__"
BODY_LIMIT_ATTRIBUTE = "__gallery_body_limit__"


@dataclass(frozen=True)
class Caller:
    """Who made a request: a stable name for audit trails, and the roles the request carries.

    `role`: the installation-wide role (every project); None for a caller that holds roles only in
    single projects. `projects`: the roles held in single projects, from the credential
    (`token:project:role`, a group mapped to `project:role`) and from the projects' member lists,
    folded in when the caller is identified. `groups`: the OIDC groups (members may be groups).
    """

    name: str
    role: Role | None
    projects: Mapping[str, Role] = field(default_factory=lambda: MappingProxyType({}))
    groups: tuple[str, ...] = ()

    def can(self, role: Role) -> bool:
        """Whether the installation-wide role covers `role` (in every project)."""
        return self.role is not None and self.role.rank >= role.rank

    @property
    def best(self) -> Role | None:
        """The highest role held anywhere: what the route-level check compares with."""
        return highest(self.role, *self.projects.values())

    def role_in(self, project: str) -> Role | None:
        """The role held in `project` (whether the project exists is the directory's to say)."""
        return highest(self.role, self.projects.get(project))

    def describe(self) -> str:
        """The caller's roles in words, for refusals."""
        if self.role is not None and not self.projects:
            return self.role.value
        held = [f"{self.role.value} in every project"] if self.role is not None else []
        held += [f"{role.value} in {project}" for project, role in sorted(self.projects.items())]
        return ", ".join(held) or "no role"


ANONYMOUS_ADMIN = Caller(name="local", role=Role.admin)


def identify(settings: GallerySettings, authorization: str | None) -> Caller:
    """The caller behind an `Authorization: Bearer <token>` header; raise Unauthorized if unknown.

    The roles the projects' member lists give the caller (by name and by group) are folded into
    `Caller.projects` here, so every later check is a lookup.
    """
    if not settings.auth_enabled:
        return ANONYMOUS_ADMIN
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    caller = _static_caller(settings, token)
    if caller is None:
        verifier = settings.token_verifier()
        if verifier is None or not verifier.looks_like_jwt(token):
            raise Unauthorized("unknown bearer token")
        verified = verifier.verify(token)
        caller = Caller(name=verified.name, role=verified.role, projects=verified.projects, groups=verified.groups)
    directory = settings.project_directory()
    members = directory.memberships(caller.name, caller.groups)
    if members:
        projects = dict(caller.projects)
        for project, role in members.items():
            projects[project] = highest(projects.get(project), role) or role
        caller = replace(caller, projects=MappingProxyType(projects))
    if caller.best is None:
        groups = ""
        if caller.groups:
            groups = f"; its groups {list(caller.groups)} match no grant in GALLERY_OIDC_GROUP_ROLES"
        raise Forbidden(f"{caller.name} has no Gallery role in any project{groups}")
    return caller


def _static_caller(settings: GallerySettings, token: str) -> Caller | None:
    """The caller of a static token (`GALLERY_API_TOKENS`), None when `token` is none of them."""
    for known, (role, projects) in settings.token_grants().items():
        # constant-time comparison so a token cannot be guessed byte by byte from timings
        if hmac.compare_digest(known.encode(), token.encode()):
            label = role.value if role is not None and not projects else "token"
            return Caller(
                name=f"{label}-{hashlib.sha256(token.encode()).hexdigest()[:8]}",
                role=role,
                projects=MappingProxyType(dict(projects)),
            )
    return None


def required_role(method: str) -> Role:
    """The role a route that declares none needs: reads `reader`, writes `writer`."""
    return Role.reader if method.upper() in SAFE_METHODS else Role.writer


def check_role(caller: Caller, needed: Role) -> None:
    """Forbidden unless `caller` holds `needed` (or a role above it) somewhere: installation-wide or in
    a project. Which project a request touches is the route's to check (`projects.authorize_in`)."""
    best = caller.best
    if best is None or best.rank < needed.rank:
        raise Forbidden(f"this request needs the {needed.value} role; your token has {caller.describe()}")


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
    from fastapi import Depends

    return Depends(RoleRequirement(role))


E = TypeVar("E", bound=Callable[..., Any])


def public(endpoint: E) -> E:
    """Mark a plain Starlette endpoint as answering without a token (a page a browser loads)."""
    setattr(endpoint, ROLE_ATTRIBUTE, None)
    return endpoint


def body_limit(setting: str) -> Callable[[E], E]:
    """Mark a route's endpoint (FastAPI or plain Starlette) as taking bodies up to the settings field
    `setting` (an upload: `max_import_bytes`) instead of GALLERY_MAX_BODY_BYTES; `AccessMiddleware` checks
    it before the body is read, as it checks the role."""

    def mark(endpoint: E) -> E:
        setattr(endpoint, BODY_LIMIT_ATTRIBUTE, setting)
        return endpoint

    return mark


def needing(role: Role) -> Callable[[E], E]:
    """Mark a plain Starlette endpoint with the role its requests need, as `requires` marks a FastAPI
    route; `AccessMiddleware` checks it before the body is read."""

    def mark(endpoint: E) -> E:
        setattr(endpoint, ROLE_ATTRIBUTE, role)
        return endpoint

    return mark


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
