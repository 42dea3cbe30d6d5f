"""How a new version gets its SemVer string.

- The first version of a model is 1.0.0.
- A version whose signature differs from the latest version's is the next major (2.0.0 after 1.3.0).
- A retrain with the same signature (or none given) is the next minor (1.4.0 after 1.3.0).
- A caller may choose the string, if it is valid SemVer and greater than the latest.
"""

from __future__ import annotations

import semver

from gallery_common.errors import InvalidRequest
from gallery_common.events import Signature

FIRST = semver.Version(1, 0, 0)


def parse_semver(text: str) -> semver.Version:
    """Parse MAJOR.MINOR.PATCH[-pre][+build]; raise InvalidRequest naming the rule."""
    try:
        return semver.Version.parse(text)
    except (ValueError, TypeError):
        raise InvalidRequest(
            f"semver {text!r} is not a valid semantic version: expected MAJOR.MINOR.PATCH, e.g. 1.2.0"
        ) from None


def signature_changed(previous: Signature | None, new: Signature | None) -> bool:
    """A version without a signature says nothing new; one with a different signature changes the API."""
    return new is not None and new != previous


def next_semver(
    latest: str | None,
    latest_signature: Signature | None,
    signature: Signature | None,
    requested: str | None = None,
) -> str:
    """The SemVer of a new version, given the latest one's (None for the first version)."""
    if requested is not None:
        wanted = parse_semver(requested)
        if latest is not None and wanted <= parse_semver(latest):
            raise InvalidRequest(
                f"semver {requested} must be greater than the latest version's {latest} (versions only increase)"
            )
        if latest is None and wanted <= semver.Version(0, 0, 0):
            raise InvalidRequest("semver 0.0.0 is not allowed: a version must be greater than 0.0.0")
        return str(wanted)
    if latest is None:
        return str(FIRST)
    current = parse_semver(latest)
    if signature_changed(latest_signature, signature):
        return str(current.bump_major())
    return str(current.bump_minor())
