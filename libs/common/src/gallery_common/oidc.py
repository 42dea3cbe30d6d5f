"""OIDC bearer tokens: JWTs an organisation's identity provider signs, verified against its JWKS.

`TokenVerifier` turns a token into a `Caller`: PyJWT checks the signature with the issuer's key
(found by `kid`), `iss`, `aud`, `exp`, `nbf` and `iat` with the configured clock skew; only the
asymmetric algorithms the settings accept are tried, so neither `none` nor an HMAC "signed" with the
public key gets through. The groups claim maps to roles through `GroupRoles`: a global role
(`reader`) or, for projects, `project:role`.

The issuer's keys come from its discovery document (`/.well-known/openid-configuration` →
`jwks_uri`) and are kept `jwks_ttl_s`; past that they are refreshed in the background while the old
set still answers. A token signed with a key not in the set triggers one refresh, at most once every
`refresh_interval_s`, so a flood of made-up `kid`s cannot hammer the issuer. A verified token is
remembered by its SHA-256 until it expires: the inference fast path pays one dictionary lookup per
request after the first, and one signature check the first time a token is seen.

The first fetch and the refresh for an unknown key run in the request that needs them (a bounded
HTTP call with a short timeout); every other refresh is in a background thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

from .errors import Unauthorized
from .projects import RoleGrant as RoleGrant
from .projects import fold_grants
from .settings import ASYMMETRIC_ALGORITHMS as ASYMMETRIC_ALGORITHMS
from .settings import Role

DISCOVERY_PATH = "/.well-known/openid-configuration"
# the algorithms a public key can verify; `none` and HS* never are (an HMAC keyed with a public key
# would let anyone who reads the JWKS sign tokens)
MAX_CACHED_TOKENS = 10_000

FetchJson = Callable[[str], Mapping[str, Any]]


@dataclass(frozen=True)
class GroupRoles:
    """What each group of the token's groups claim grants, globally and per project."""

    grants: Mapping[str, tuple[RoleGrant, ...]]

    def roles_of(self, groups: list[str]) -> tuple[Role | None, dict[str, Role]]:
        """The highest global role and the highest role per project the groups grant."""
        return fold_grants(grant for group in groups for grant in self.grants.get(group, ()))


@dataclass(frozen=True)
class OidcConfig:
    """The issuer to trust and how to read its tokens (from `GALLERY_OIDC_*`)."""

    issuer: str
    audience: str
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    clock_skew_s: float = 60.0
    groups_claim: str = "groups"
    name_claim: str = "sub"
    group_roles: GroupRoles = field(default_factory=lambda: GroupRoles({}))
    jwks_ttl_s: float = 300.0
    refresh_interval_s: float = 30.0
    http_timeout_s: float = 5.0


@dataclass(frozen=True)
class VerifiedToken:
    """What a verified token says: who, with which roles, until when."""

    name: str
    role: Role | None
    projects: Mapping[str, Role]
    expires_at: float
    claims: Mapping[str, Any]
    groups: tuple[str, ...] = ()


def http_fetch_json(timeout_s: float) -> FetchJson:
    """GET a JSON document with httpx (what the verifier uses against a real issuer)."""

    def fetch(url: str) -> Mapping[str, Any]:
        response = httpx.get(url, timeout=timeout_s, follow_redirects=False)
        response.raise_for_status()
        document = response.json()
        if not isinstance(document, dict):
            raise ValueError(f"{url} did not answer a JSON object")
        return document

    return fetch


class IssuerKeys:
    """The issuer's signing keys by `kid`, fetched through its discovery document and kept fresh."""

    def __init__(self, config: OidcConfig, fetch_json: FetchJson, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._fetch_json = fetch_json
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._last_forced: float | None = None
        self._last_failure: tuple[float, str] | None = None
        self._lock = threading.Lock()
        self._background: threading.Thread | None = None
        self.fetches = 0

    def _load(self) -> None:
        self.fetches += 1
        discovery = self._fetch_json(self.config.issuer.rstrip("/") + DISCOVERY_PATH)
        if discovery.get("issuer") != self.config.issuer:
            raise Unauthorized(
                f"the issuer's discovery document names issuer {discovery.get('issuer')!r}, "
                f"not the configured GALLERY_OIDC_ISSUER {self.config.issuer!r}"
            )
        jwks_uri = discovery.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise Unauthorized("the issuer's discovery document has no jwks_uri")
        keys: dict[str, jwt.PyJWK] = {}
        for jwk in self._fetch_json(jwks_uri).get("keys", []):
            if jwk.get("use", "sig") != "sig" or "kid" not in jwk:
                continue
            try:
                keys[jwk["kid"]] = jwt.PyJWK(jwk)
            except jwt.PyJWTError:
                continue  # a key type this verifier cannot use (or an encryption key) is not a signing key here
        self._keys = keys
        self._fetched_at = self._clock()

    def _refresh(self, *, forced: bool) -> None:
        """Fetch the keys unless a fetch was tried less than `refresh_interval_s` ago (when `forced`)."""
        with self._lock:
            now = self._clock()
            if forced:
                if self._last_forced is not None and now - self._last_forced < self.config.refresh_interval_s:
                    return
                self._last_forced = now
            elif self._fetched_at is not None and now - self._fetched_at <= self.config.jwks_ttl_s:
                return  # fetched while this caller waited for the lock (the start-up prefetch)
            failure = self._last_failure
            if not self._keys and failure is not None and now - failure[0] < self.config.refresh_interval_s:
                # an issuer that is down is asked again only after the interval, not by every request
                raise Unauthorized(f"cannot fetch the issuer's signing keys: {failure[1]}")
            try:
                self._load()
            except (httpx.HTTPError, ValueError) as exc:
                self._last_failure = (now, str(exc) or type(exc).__name__)
                if not self._keys:
                    raise Unauthorized(f"cannot fetch the issuer's signing keys: {exc}") from None
            else:
                self._last_failure = None

    def refresh_in_background(self) -> None:
        """Fetch the keys in a thread (a no-op while one is under way); the current keys keep answering."""
        if self._background is not None and self._background.is_alive():
            return
        self._background = threading.Thread(target=self._quiet_refresh, name="oidc-jwks-refresh", daemon=True)
        self._background.start()

    def _quiet_refresh(self) -> None:
        # on failure the old keys keep answering; the next unknown kid tries again
        with contextlib.suppress(Unauthorized):
            self._refresh(forced=False)

    def key(self, kid: str) -> jwt.PyJWK:
        """The key with this `kid`; an unknown one triggers one (rate-limited) refresh."""
        if self._fetched_at is None:
            self._refresh(forced=False)
        elif self._clock() - self._fetched_at > self.config.jwks_ttl_s:
            self.refresh_in_background()
        found = self._keys.get(kid)
        if found is None:
            self._refresh(forced=True)
            found = self._keys.get(kid)
        if found is None:
            raise Unauthorized(f"unknown signing key (kid {kid!r}) for issuer {self.config.issuer}")
        return found


_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not yet valid (nbf or iat in the future)"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.MissingRequiredClaimError, "a required claim is missing"),
    (jwt.InvalidAlgorithmError, "algorithm not accepted"),
)


def _reason(exc: jwt.PyJWTError) -> str:
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return f"{reason}: {exc}"
    return f"malformed token: {exc}"


class TokenVerifier:
    """Verify OIDC bearer tokens of one issuer and remember the verified ones until they expire."""

    def __init__(
        self,
        config: OidcConfig,
        fetch_json: FetchJson | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        bad = set(config.algorithms) - ASYMMETRIC_ALGORITHMS
        if bad:
            raise ValueError(f"algorithms {sorted(bad)} cannot be verified with an issuer's public keys")
        self.config = config
        self.keys = IssuerKeys(config, fetch_json or http_fetch_json(config.http_timeout_s))
        self._clock = clock
        self._verified: dict[bytes, VerifiedToken] = {}

    def prefetch(self) -> None:
        """Fetch the issuer's keys in the background, so the first token does not wait for them."""
        self.keys.refresh_in_background()

    @staticmethod
    def looks_like_jwt(token: str) -> bool:
        return token.count(".") == 2

    def verify(self, token: str) -> VerifiedToken:
        """The verified token's identity and roles; Unauthorized with the reason (never the token)."""
        digest = hashlib.sha256(token.encode()).digest()
        known = self._verified.get(digest)
        if known is not None:
            if known.expires_at > self._clock():
                return known
            del self._verified[digest]
        verified = self._verify(token)
        if len(self._verified) >= MAX_CACHED_TOKENS:
            now = self._clock()
            self._verified = {d: v for d, v in self._verified.items() if v.expires_at > now}
            if len(self._verified) >= MAX_CACHED_TOKENS:
                self._verified.clear()
        self._verified[digest] = verified
        return verified

    def _verify(self, token: str) -> VerifiedToken:
        config = self.config
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid OIDC token: {_reason(exc)}") from None
        alg = header.get("alg")
        if alg not in config.algorithms:
            accepted = ", ".join(config.algorithms)
            raise Unauthorized(
                f"invalid OIDC token: algorithm {alg!r} is not accepted (GALLERY_OIDC_ALGORITHMS: {accepted})"
            )
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise Unauthorized("invalid OIDC token: its header names no signing key (kid)")
        key = self.keys.key(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.clock_skew_s,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid OIDC token: {_reason(exc)}") from None
        groups = claims.get(config.groups_claim) or []
        if isinstance(groups, str):
            groups = [groups]
        groups = [g for g in groups if isinstance(g, str)]
        role, projects = config.group_roles.roles_of(groups)
        subject = claims.get(config.name_claim) or claims["sub"]
        return VerifiedToken(
            name=f"oidc:{subject}",
            role=role,
            projects=projects,
            expires_at=float(claims["exp"]) + config.clock_skew_s,
            claims=claims,
            groups=tuple(groups),
        )
