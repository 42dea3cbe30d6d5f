"""The Gallery's sign-in state in two JetStream key-value buckets, shared by every Gallery replica.

`gallery_sessions` holds the signed-in sessions and `gallery_logins` the sign-ins under way (a PKCE
verifier and nonce between the redirect to the identity provider and its callback), so a callback or a
page may land on any replica, and a Gallery restart signs no one out. Entries expire on their own: a
session `GALLERY_SESSION_MAX_AGE_S` after its last write, a login after 10 minutes; each bucket is bounded
in bytes, the oldest giving way, so a flood of started logins cannot fill the server (and, being a bucket
of its own, cannot push out sessions).

What is stored is sealed (`gallery_web.sessions`): the key is a hash of the browser's cookie, the value
encrypted with a key derived from the cookie, so a NATS user who can read the buckets learns no token.
Only the Gallery's NATS user may use them (`nats_auth`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nats.js.kv import KeyValue

from .routes_kv import ensure_expiring_bucket

if TYPE_CHECKING:
    from .bus import EventBus

SESSIONS_BUCKET = "gallery_sessions"
LOGINS_BUCKET = "gallery_logins"
BUCKETS = (SESSIONS_BUCKET, LOGINS_BUCKET)
LOGIN_TTL_S = 600.0  # a sign-in not finished within this starts over
LOGINS_MAX_BYTES = 64 * 1024**2


def stream_of(bucket: str) -> str:
    return f"KV_{bucket}"


def subjects_of(bucket: str) -> str:
    return f"$KV.{bucket}.>"


async def ensure_session_buckets(bus: EventBus, max_age_s: float, max_bytes: int) -> tuple[KeyValue, KeyValue]:
    """The sessions bucket (entries live `max_age_s`, `max_bytes` at most) and the logins bucket."""
    sessions = await ensure_expiring_bucket(
        bus,
        SESSIONS_BUCKET,
        description="Model Gallery sign-in sessions, sealed: one key per session cookie's hash",
        ttl_s=max_age_s,
        max_bytes=max_bytes,
    )
    logins = await ensure_expiring_bucket(
        bus,
        LOGINS_BUCKET,
        description="Model Gallery sign-ins under way, sealed: one key per login state's hash",
        ttl_s=LOGIN_TTL_S,
        max_bytes=LOGINS_MAX_BYTES,
    )
    return sessions, logins
