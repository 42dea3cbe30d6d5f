"""Sign-in sessions and sign-ins under way, sealed in the NATS buckets every Gallery replica shares.

A browser holds one random value, its session cookie (or, while it signs in, the login's `state`). Each
record's key in its bucket is a hash of that value and its content is encrypted (AES-256-GCM, the key
bound as associated data) with a key derived from the same value: the buckets say neither who is signed
in nor any token, and a record copied to another key does not open. Losing the cookie loses the session,
as it should.

A session is written again when its tokens are renewed, each write against the revision read
(`replace`): a replica first claims the renewal in the record, so only one replica sends the refresh
token to the issuer (which may let each refresh token serve once), and the others go on with the access
token in hand, or wait for the renewed one. The buckets open on first use, so the Gallery starts and serves its
token-holding callers while NATS is away; sign-in then answers 503.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nats import errors as nats_errors
from nats.js import errors as js_errors
from nats.js.kv import KeyValue

from gallery_common.errors import Unavailable
from gallery_common.sessions_kv import LOGIN_TTL_S, ensure_session_buckets
from gallery_common.telemetry import get_logger

if TYPE_CHECKING:
    from gallery_common.bus import EventBus

log = get_logger(__name__)
T = TypeVar("T")
_NONCE_BYTES = 12
_WRONG_LAST_SEQUENCE = 10071  # JetStream: the subject's last revision is not the one expected


@dataclass(frozen=True)
class Session:
    """A signed-in person: the tokens the issuer gave, kept here, never in the browser."""

    name: str
    access_token: str
    id_token: str | None
    expires_at: float  # the access token's expiry
    refresh_token: str | None = None
    ends_at: float = 0.0  # past this the person signs in again, whatever the refresh token allows
    renewing_until: float = 0.0  # a replica claimed the renewal of the access token until then

    def usable(self, now: float) -> bool:
        """Whether the session still stands: before its end, and with a live access token or a way to renew it."""
        return now < self.ends_at and (self.expires_at > now or self.refresh_token is not None)


@dataclass(frozen=True)
class PendingLogin:
    verifier: str
    nonce: str
    next_path: str
    redirect_uri: str
    started: float


def _key(kind: str, secret: str) -> str:
    return hashlib.sha256(f"gallery-{kind}-key\0{secret}".encode()).hexdigest()


def _cipher(kind: str, secret: str) -> AESGCM:
    return AESGCM(hashlib.sha256(f"gallery-{kind}-seal\0{secret}".encode()).digest())


def seal(kind: str, secret: str, record: dict[str, Any]) -> tuple[str, bytes]:
    """The bucket key of `secret` and `record` encrypted under a key only `secret` gives."""
    key = _key(kind, secret)
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return key, nonce + _cipher(kind, secret).encrypt(nonce, orjson.dumps(record), key.encode())


def unseal(kind: str, secret: str, key: str, value: bytes) -> dict[str, Any] | None:
    """What `seal` stored; None when it does not open with `secret` (another key's record, or damaged)."""
    try:
        plain = _cipher(kind, secret).decrypt(value[:_NONCE_BYTES], value[_NONCE_BYTES:], key.encode())
    except (InvalidTag, ValueError):
        return None
    record = orjson.loads(plain)
    return record if isinstance(record, dict) else None


class SessionStore:
    """The Gallery's sessions (by cookie) and logins under way (by state) on the bus."""

    def __init__(self, bus: EventBus, max_age_s: float, max_bytes: int) -> None:
        self.bus = bus
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self._buckets: tuple[KeyValue, KeyValue] | None = None
        self._opening = asyncio.Lock()

    async def _open(self) -> tuple[KeyValue, KeyValue]:
        if self._buckets is None:
            async with self._opening:
                if self._buckets is None:
                    if not self.bus.is_connected:
                        raise Unavailable("sign-in is unavailable: the Gallery cannot reach NATS, where sessions live")
                    self._buckets = await ensure_session_buckets(self.bus, self.max_age_s, self.max_bytes)
        return self._buckets

    async def _call(self, work: Callable[[KeyValue, KeyValue], Awaitable[T]]) -> T:
        try:
            return await work(*await self._open())
        except (nats_errors.Error, TimeoutError) as exc:
            if isinstance(exc, js_errors.KeyNotFoundError | js_errors.KeyWrongLastSequenceError):
                raise  # answers about the records, not outages
            raise Unavailable(f"sign-in is unavailable: the session store on NATS did not answer ({exc!r})") from None

    async def start_login(self, login: PendingLogin) -> str:
        state = secrets.token_urlsafe(24)
        key, value = seal("login", state, asdict(login))
        await self._call(lambda _, logins: logins.put(key, value))
        return state

    async def finish_login(self, state: str) -> PendingLogin | None:
        """The login started under `state`, once: the first callback to take it deletes it."""
        key = _key("login", state)

        async def take(_: KeyValue, logins: KeyValue) -> PendingLogin | None:
            try:
                entry = await logins.get(key)
                await logins.delete(key, last=entry.revision)
            except js_errors.KeyNotFoundError:
                return None  # none, or expired
            except js_errors.APIError as exc:
                if exc.err_code == _WRONG_LAST_SEQUENCE:
                    return None  # another callback took it first
                raise
            record = unseal("login", state, key, entry.value or b"")
            return None if record is None else PendingLogin(**record)

        login = await self._call(take)
        if login is None or time.time() - login.started > LOGIN_TTL_S:
            return None
        return login

    async def open(self, session: Session) -> str:
        session_id = secrets.token_urlsafe(32)
        key, value = seal("session", session_id, asdict(session))
        await self._call(lambda sessions, _: sessions.put(key, value))
        return session_id

    async def get(self, session_id: str) -> tuple[Session, int] | None:
        """The session and the revision it was read at; None (and the record gone) once it cannot be used."""
        key = _key("session", session_id)

        async def read(sessions: KeyValue, _: KeyValue) -> tuple[Session, int] | None:
            try:
                entry = await sessions.get(key)
            except js_errors.KeyNotFoundError:
                return None
            record = unseal("session", session_id, key, entry.value or b"")
            if record is None:
                return None
            session = Session(**record)
            if not session.usable(time.time()):
                await sessions.delete(key)
                return None
            return session, int(entry.revision or 0)

        return await self._call(read)

    async def replace(self, session_id: str, session: Session, revision: int) -> int | None:
        """Write `session` over the one read at `revision`: the new revision, None when another write (or the
        session's end) came first."""
        key, value = seal("session", session_id, asdict(session))
        try:
            return await self._call(lambda sessions, _: sessions.update(key, value, last=revision))
        except (js_errors.KeyWrongLastSequenceError, js_errors.KeyNotFoundError):
            return None

    async def close(self, session_id: str) -> None:
        key = _key("session", session_id)
        await self._call(lambda sessions, _: sessions.delete(key))
