"""Which sites may join a federation: each site holds a secret token, the coordinator only its sha256.

The trainer's `GALLERY_FEDERATION_SITE_TOKENS` lists the sites a federated job accepts, as comma-separated
`name:sha256` pairs (the hex sha256 of the site's token; `gallery site token NAME` makes a token and its
pair). A site sends its token and its name with its connection (`gallery site run --token-file`, or
`GALLERY_SITE_TOKEN`); the coordinator refuses a connection whose token is missing, unknown or another
site's (gRPC UNAUTHENTICATED, with the reason), and holds every update that connection sends to the name
the token belongs to. Without the setting any site that reaches the coordinator may join, as before.

Imported by the trainer, Flower's interpreter (its relays) and the CLI: the standard library only.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping

SITE_TOKENS_ENV = "GALLERY_FEDERATION_SITE_TOKENS"
SITE_TOKEN_ENV = "GALLERY_SITE_TOKEN"
# a site's certificate and its private key for mutual TLS (PEM, or the path of a PEM file), when it is not
# given as files on `gallery site run`'s command line: how Kubernetes hands over an optional Secret
SITE_CERTIFICATE_ENV = "GALLERY_SITE_CERTIFICATE"
SITE_PRIVATE_KEY_ENV = "GALLERY_SITE_PRIVATE_KEY"
TOKEN_HEADER = "authorization"  # gRPC metadata keys are lower case
SITE_HEADER = "gallery-site"
SITE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
"""A site's name: it becomes part of metric keys (`site.<name>.val_accuracy`), so no dots or spaces."""
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class SiteTokensInvalid(ValueError):
    """The site token list cannot be read; the message says which entry and why."""


def token_digest(token: str) -> str:
    """What the coordinator keeps of a site's token: its sha256, as hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_site_token() -> str:
    """A fresh secret for one site (256 random bits)."""
    return secrets.token_urlsafe(32)


def parse_site_tokens(text: str) -> dict[str, str]:
    """`name:sha256,name:sha256` -> {name: sha256}; SiteTokensInvalid names the bad entry by its place (never
    by its text when it is no pair: that may be a token pasted in place of its entry)."""
    tokens: dict[str, str] = {}
    for place, entry in enumerate(filter(None, (part.strip() for part in text.split(","))), start=1):
        name, colon, digest = (part.strip() for part in entry.partition(":"))
        digest = digest.lower().removeprefix("sha256:")
        if not colon:
            raise SiteTokensInvalid(f"{SITE_TOKENS_ENV}: entry {place} is not name:<sha256 of the site's token>")
        if not re.fullmatch(SITE_NAME_PATTERN, name):
            raise SiteTokensInvalid(f"{SITE_TOKENS_ENV}: entry {place}: {name!r} is not a site name")
        if not _DIGEST.fullmatch(digest):
            raise SiteTokensInvalid(
                f"{SITE_TOKENS_ENV}: site {name}'s entry is not name:<64 hex digits of the token's sha256>"
            )
        if name in tokens:
            raise SiteTokensInvalid(f"{SITE_TOKENS_ENV}: site {name} is listed twice")
        tokens[name] = digest
    return tokens


def site_metadata(name: str, token: str) -> tuple[tuple[str, str], ...]:
    """The gRPC metadata a site's connection carries."""
    return ((TOKEN_HEADER, f"Bearer {token}"), (SITE_HEADER, name))


def admit_site(tokens: Mapping[str, str], metadata: Iterable[tuple[str, str | bytes]]) -> tuple[str | None, str]:
    """(the site's name, "") when the connection's metadata holds a token of a listed site and that site's
    name; (None, why not) otherwise. The reason names no secret."""
    given = {key.lower(): value.decode() if isinstance(value, bytes) else value for key, value in metadata}
    name = given.get(SITE_HEADER, "")
    scheme, _, token = given.get(TOKEN_HEADER, "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None, (
            f"this federation admits only listed sites: connect with the site's token (gallery site run --token-file, "
            f"or {SITE_TOKEN_ENV})"
        )
    expected = tokens.get(name)
    if expected is None:
        return None, f"site {name or '(no name)'} is not one of this federation's sites"
    if not hmac.compare_digest(token_digest(token), expected):
        return None, f"the token is not site {name}'s"
    return name, ""


def admit_connection(
    tokens: Mapping[str, str] | None,
    metadata: Iterable[tuple[str, str | bytes]],
    certificate_name: str | None = None,
) -> tuple[str | None, str]:
    """Whom a connection is admitted as: (the site, "") or (None, why not); (None, "") admits it as no site in
    particular (no list, no certificates). `certificate_name` is the common name of the site's certificate
    when the coordinator asks sites for one (mutual TLS; None when it does not): the site is the one it
    names, and with `tokens` too a token must be that site's."""
    site = None
    if certificate_name is not None:
        if not re.fullmatch(SITE_NAME_PATTERN, certificate_name):
            return None, f"its certificate's common name {certificate_name!r} is not a site name"
        site = certificate_name
    if tokens is None:
        return site, ""
    by_token, refusal = admit_site(tokens, metadata)
    if by_token is not None and site is not None and by_token != site:
        return None, f"its token is site {by_token}'s but its certificate is site {site}'s"
    return by_token, refusal
