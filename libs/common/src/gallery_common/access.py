"""Authentication, role and body-size checks that run before a request's body is read.

FastAPI reads and parses a body before any dependency runs, so a check made in a dependency comes
after a caller without a token has made the service take in, and parse, whatever it sent.
`AccessMiddleware` sits in front of the app instead: from the headers alone it identifies the caller
(401), checks the role the matched route declares (403) and refuses a declared `Content-Length`
over the limit (413), all before a byte of the body is read; a body sent without a length (chunked)
is counted as the app reads it and cut off with 413 once it grows past the limit.

The role a route needs comes from the route itself (`auth.requires`, `auth.AdminDep`,
`auth.public`), read once from the routers the app is built from; a route that declares none
needs `reader` to read and `writer` to write.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.responses import JSONResponse, Response  # FastAPI's are these
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import (
    BODY_LIMIT_ATTRIBUTE,
    CALLER_SCOPE_KEY,
    ROLE_ATTRIBUTE,
    Caller,
    RoleRequirement,
    check_role,
    identify,
    required_role,
)
from .errors import BadRequest, GalleryError, Unavailable, error_headers
from .settings import GallerySettings, Role

# the matched route's path template, for metrics of requests answered before (or without) routing
ROUTE_SCOPE_KEY = "gallery.route"

ErrorRenderer = Callable[[GalleryError], Response]


class PayloadTooLarge(GalleryError):
    status_code = 413


class RouteSource(Protocol):
    """What routes come from: an `APIRouter`, or an app's own `router`."""

    @property
    def routes(self) -> Sequence[Any]: ...


def gallery_error_response(exc: GalleryError) -> JSONResponse:
    """The answer for a domain error: its status, `{"error": message}` and its `error_headers`."""
    return JSONResponse({"error": exc.message}, status_code=exc.status_code, headers=error_headers(exc))


@dataclass(frozen=True, slots=True)
class AccessRule:
    """What one route needs: no token (`public`), a declared role, or the method's default (role None)."""

    path_regex: re.Pattern[str]
    template: str
    public: bool
    role: Role | None
    render: ErrorRenderer | None
    # the settings field whose value limits this route's body, instead of max_body_bytes (`auth.body_limit`)
    body_limit: str | None = None

    def needed(self, method: str) -> Role | None:
        """The role to check; None: the route answers without a token."""
        if self.public:
            return None
        return self.role or required_role(method)


def _declared_roles(route: Any) -> list[Role | None]:
    """The roles a route declares: `RoleRequirement` dependencies anywhere in its tree, or an endpoint mark."""
    declared: list[Role | None] = []
    endpoint = getattr(route, "endpoint", None)
    if endpoint is not None and hasattr(endpoint, ROLE_ATTRIBUTE):
        declared.append(getattr(endpoint, ROLE_ATTRIBUTE))
    dependant = getattr(route, "dependant", None)
    pending = list(dependant.dependencies) if dependant is not None else []
    while pending:
        dependency = pending.pop()
        if isinstance(dependency.call, RoleRequirement):
            declared.append(dependency.call.role)
        pending.extend(dependency.dependencies)
    return declared


def rule_for(route: Any) -> AccessRule | None:
    """The access rule of one route; None for something that is not a path route (a nested router)."""
    path_regex = getattr(route, "path_regex", None)
    if path_regex is None:
        return None
    declared = _declared_roles(route)
    roles = [role for role in declared if role is not None]
    return AccessRule(
        path_regex=path_regex,
        template=getattr(route, "path", ""),
        # public only when nothing asks for more: a router marked public cannot open an admin route
        public=bool(declared) and not roles,
        role=max(roles, key=lambda role: role.rank) if roles else None,
        render=getattr(route, "error_response", None),
        body_limit=getattr(getattr(route, "endpoint", None), BODY_LIMIT_ATTRIBUTE, None),
    )


class AccessPolicy:
    """The rules of an app's routes by method, compiled on first use (routes are added after the middleware)."""

    def __init__(self, sources: Iterable[RouteSource]) -> None:
        self._sources = list(sources)
        self._by_method: dict[str, list[AccessRule]] | None = None
        self._any_method: list[AccessRule] = []

    def _compile(self) -> dict[str, list[AccessRule]]:
        by_method: dict[str, list[AccessRule]] = {}
        for source in self._sources:
            for route in source.routes:
                rule = rule_for(route)
                if rule is None:
                    continue
                methods = getattr(route, "methods", None)
                if not methods:
                    self._any_method.append(rule)
                for method in methods or ():
                    by_method.setdefault(method, []).append(rule)
        self._by_method = by_method
        return by_method

    def match(self, method: str, path: str) -> AccessRule | None:
        """The first route (in the app's order) that serves `method` on `path`, as the router would pick it."""
        by_method = self._by_method if self._by_method is not None else self._compile()
        for rule in by_method.get(method, ()):
            if rule.path_regex.match(path):
                return rule
        for rule in self._any_method:
            if rule.path_regex.match(path):
                return rule
        return None


def check_body_limits(settings: GallerySettings, sources: Iterable[RouteSource]) -> None:
    """Every route's `auth.body_limit` names a byte count in `settings`; a misspelt or missing field stops the
    app as it starts (ValueError naming the route and the field) instead of failing each request to it."""
    for source in sources:
        for route in source.routes:
            setting = getattr(getattr(route, "endpoint", None), BODY_LIMIT_ATTRIBUTE, None)
            if setting is None:
                continue
            value = getattr(settings, setting, None)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(
                    f"route {getattr(route, 'path', route)!r} takes its body limit from the settings field "
                    f"{setting!r}, which {type(settings).__name__} has not as a number of bytes"
                )


def route_path(scope: Scope) -> str:
    """The path routes match against: without the root path a proxy may have put in front."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _headers_of(scope: Scope) -> tuple[str | None, str | None]:
    """Authorization and Content-Length, in one pass over the raw headers."""
    authorization = length = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"content-length":
            length = value.decode("latin-1")
    return authorization, length


class _LimitedBody:
    """`receive` that counts body bytes and raises PayloadTooLarge past `limit`, reading no further."""

    __slots__ = ("_receive", "exceeded", "limit", "setting", "size")

    def __init__(self, receive: Receive, limit: int, setting: str) -> None:
        self._receive = receive
        self.limit = limit
        self.setting = setting
        self.size = 0
        self.exceeded = False

    def error(self) -> PayloadTooLarge:
        return too_large(self.limit, self.setting)

    async def receive(self) -> Message:
        if self.exceeded:
            raise self.error()
        message = await self._receive()
        if message["type"] == "http.request":
            self.size += len(message.get("body", b""))
            if self.size > self.limit:
                self.exceeded = True
                raise self.error()
        return message


def admit(
    settings: GallerySettings,
    scope: Scope,
    receive: Receive,
    needed: Role | None,
    limit: int,
    setting: str = "max_body_bytes",
) -> _LimitedBody:
    """From the headers alone: identify the caller and check `needed` (None: no token needed), refuse a
    declared Content-Length over `limit` (the settings field `setting`, named in the refusal). Returns the
    body's `receive`, which raises PayloadTooLarge once more than `limit` bytes arrive; raises the
    GalleryError (401, 403, 400, 413) of a refusal."""
    authorization, length = _headers_of(scope)
    caller = admit_headers(settings, authorization, length, needed, limit, setting)
    if caller is not None:
        scope[CALLER_SCOPE_KEY] = caller
    return _LimitedBody(receive, limit, setting)


def admit_headers(
    settings: GallerySettings,
    authorization: str | None,
    length: str | None,
    needed: Role | None,
    limit: int,
    setting: str = "max_body_bytes",
) -> Caller | None:
    """`admit` from the two headers it reads: the caller (None when `needed` is None: no token needed);
    raises the GalleryError (401, 403, 400, 413) of a refusal."""
    caller = None
    if needed is not None:
        caller = identify(settings, authorization)
        check_role(caller, needed)
    if length is not None and _declared_length(length) > limit:
        raise too_large(limit, setting)
    return caller


def too_large(limit: int, setting: str = "max_body_bytes") -> PayloadTooLarge:
    """The refusal of a body over `limit` bytes, the value of the settings field `setting`."""
    variable = f"GALLERY_{setting.upper()}"
    return PayloadTooLarge(f"the request body is over this service's limit of {limit} bytes ({variable})")


class AccessMiddleware:
    """Identify the caller, check the route's role and the body's size before the app reads the body.

    Refusals answer `{"error": ...}` (401 with `WWW-Authenticate: Bearer`), or in the shape of the
    route's own `error_response(exc)` when it has one (the MLflow-compatible API).
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: GallerySettings,
        sources: Iterable[RouteSource],
        max_body_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        sources = list(sources)
        check_body_limits(settings, sources)
        self.policy = AccessPolicy(sources)
        self.limit = max_body_bytes if max_body_bytes is not None else settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        rule = self.policy.match(method, route_path(scope))
        if rule is not None:
            scope[ROUTE_SCOPE_KEY] = rule.template
        try:
            needed = rule.needed(method) if rule is not None else required_role(method)
            if rule is not None and rule.body_limit is not None:
                setting = rule.body_limit
                body = admit(self.settings, scope, receive, needed, getattr(self.settings, setting), setting)
            else:
                body = admit(self.settings, scope, receive, needed, self.limit)
        except GalleryError as exc:
            await self._refuse(scope, receive, send, rule, exc)
            return
        await self._serve(scope, send, rule, body)

    async def _serve(self, scope: Scope, send: Send, rule: AccessRule | None, body: _LimitedBody) -> None:
        started = replaced = False

        async def guarded_send(message: Message) -> None:
            nonlocal started, replaced
            if replaced:
                return  # the app's own answer to a body it was not allowed to finish
            if message["type"] == "http.response.start" and not started:
                if body.exceeded:
                    # whatever the app made of the cut-off body (FastAPI calls it a parse error), it is a 413
                    replaced = True
                    await self._refuse(scope, body.receive, send, rule, body.error())
                    return
                started = True
            await send(message)

        try:
            await self.app(scope, body.receive, guarded_send)
        except Exception as exc:
            if started or not body.exceeded:
                raise
            if not replaced:
                await self._refuse(scope, body.receive, send, rule, body.error())
            elif not isinstance(exc, PayloadTooLarge):
                raise

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, rule: AccessRule | None, exc: GalleryError) -> None:
        render = rule.render if rule is not None and rule.render is not None else gallery_error_response
        await render(exc)(scope, receive, send)


def _declared_length(value: str) -> int:
    try:
        length = int(value)
    except ValueError:
        raise BadRequest(f"Content-Length must be a whole number of bytes, got {value!r}") from None
    if length < 0:
        raise BadRequest(f"Content-Length must not be negative, got {value!r}")
    return length


async def read_body(receive: Receive) -> bytes:
    """The whole request body from `receive` (limited by AccessMiddleware when it runs in front)."""
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Unavailable("the client went away before sending the whole request")
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)
