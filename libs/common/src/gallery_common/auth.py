"""Bearer-token auth with reader / writer / admin roles.

Reads need `reader`, writes need `writer`, and routes that say so need `admin`. With no tokens
configured every caller is admin, which is why such a service binds to loopback only.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fastapi import Request

from .errors import Forbidden, Unauthorized
from .settings import GallerySettings, Role

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


@dataclass(frozen=True)
class Caller:
    """Who made a request: a stable name for audit trails and the role their token grants."""

    name: str
    role: Role

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
    raise Unauthorized("unknown bearer token")


def required_role(method: str) -> Role:
    return Role.reader if method.upper() in SAFE_METHODS else Role.writer


async def authorize(request: Request) -> Caller:
    """App-wide dependency: identify the caller and check the role the HTTP method needs.

    Async although it does no I/O, so FastAPI runs it inline instead of in its thread pool.
    """
    settings: GallerySettings = request.app.state.settings
    if request.url.path in OPEN_PATHS:
        return ANONYMOUS_ADMIN
    caller = identify(settings, request.headers.get("authorization"))
    needed = required_role(request.method)
    if not caller.can(needed):
        raise Forbidden(f"this request needs the {needed.value} role; your token has {caller.role.value}")
    request.state.caller = caller
    return caller


async def require_admin(request: Request) -> Caller:
    """Route dependency for admin-only operations (protected aliases, deletions of record)."""
    caller = await authorize(request)
    if not caller.can(Role.admin):
        raise Forbidden(f"this request needs the admin role; your token has {caller.role.value}")
    return caller
