"""The audit trail's store: its own JetStream streams, written by every service, deletable by none.

Records of project P are messages on `audit.P` in the AUDIT stream; checkpoints of each chain
("anchors": project, index, hash) go to `audit_anchor.P` in AUDIT_ANCHORS. Both streams are created
with `deny_delete` and `deny_purge`, so no client can remove a message, and they belong to no
service: losing any one service (its database, its disk) loses no record. They keep records for
GALLERY_AUDIT_RETENTION_DAYS (default ten years).

Several services and replicas append to one chain at once. An append reads the last message on
`audit.P`, seals the change after it and publishes with `Nats-Expected-Last-Subject-Sequence`: the
server stores it only if nobody appended in between, else the append reads again and retries. The
message id is the change's dedupe key, so the same change reported twice (a redelivered event, a
retried request) is stored once within the duplicate window (a day), and never directly after itself.

Why anchors when nothing can be deleted: `deny_delete` stops message deletion through the API, but an
operator with the server's files or the right to delete the stream could replace the whole chain with
a consistent forgery. Anchors live in another stream; a rewritten chain disagrees with the anchors
taken before the rewrite, and `verify` says which record differs.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from nats.js import api
from nats.js import errors as js_errors
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import telemetry
from .audit import (
    GENESIS_HASH,
    Anchor,
    AuditChange,
    AuditRecord,
    StoredRecord,
    VerifyReport,
    seal,
    verify_chain,
)

if TYPE_CHECKING:
    from .bus import EventBus

AUDIT_STREAM = "AUDIT"
ANCHOR_STREAM = "AUDIT_ANCHORS"
AUDIT_PREFIX = "audit."
ANCHOR_PREFIX = "audit_anchor."
MSG_ID_HEADER = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
_WRONG_LAST_SEQUENCE = 10071
_STREAM_NAME_IN_USE = 10058
_DAY = 86_400.0
_MAX_ATTEMPTS = 200

log = telemetry.get_logger(__name__)
_RECORDED = telemetry.counter("audit_records_total", "Changes recorded in the audit trail.", ("action",))


class AuditSettings(BaseSettings):
    """The audit trail's settings (GALLERY_AUDIT_*), the same in every service that records."""

    model_config = SettingsConfigDict(env_prefix="GALLERY_AUDIT_", extra="ignore")

    retention_days: float = Field(default=3650.0, gt=1, description="How long records and anchors are kept")
    anchor_every: int = Field(default=100, ge=1, description="Anchor a chain at every Nth record")
    anchor_interval_s: float = Field(default=3600.0, gt=0, description="...and when its last anchor is older")


def audit_subject(project: str) -> str:
    return f"{AUDIT_PREFIX}{project}"


def anchor_subject(project: str) -> str:
    return f"{ANCHOR_PREFIX}{project}"


def stream_configs(retention_days: float, *, protect: bool = True) -> list[api.StreamConfig]:
    """AUDIT and AUDIT_ANCHORS: file storage, kept `retention_days`, never trimmed by size.

    `protect=False` leaves out deny_delete and deny_purge: only for tests that tamper with a chain.
    """
    return [
        api.StreamConfig(
            name=name,
            subjects=[f"{prefix}>"],
            description=description,
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.NEW,  # a full server refuses new records rather than drop old ones
            max_age=retention_days * _DAY,
            duplicate_window=min(_DAY, retention_days * _DAY),
            deny_delete=protect,
            deny_purge=protect,
            allow_direct=False,
        )
        for name, prefix, description in (
            (AUDIT_STREAM, AUDIT_PREFIX, "Model Gallery audit trail: one hash chain per project"),
            (ANCHOR_STREAM, ANCHOR_PREFIX, "Model Gallery audit trail: checkpoints of each project's chain"),
        )
    ]


class AuditLog:
    """Append changes to a project's chain, read them back and verify them, over an `EventBus`."""

    def __init__(
        self,
        bus: EventBus,
        settings: AuditSettings | None = None,
        *,
        protect: bool = True,
        deadline: float = 5.0,
    ) -> None:
        """`deadline`: seconds an append waits for an unreachable NATS before it fails (Unavailable)."""
        self.bus = bus
        self.deadline = deadline
        self.settings = settings or AuditSettings()
        self.protect = protect
        self._last_anchor: dict[str, float] = {}
        self._ready = False

    async def ensure_streams(self) -> None:
        """Create the streams, or bring their retention and protection to this configuration.

        Protection is only ever switched on: nats-server refuses to lift deny_delete or deny_purge.
        """
        for config in stream_configs(self.settings.retention_days, protect=self.protect):

            async def ensure(config: api.StreamConfig = config) -> None:
                try:
                    await self.bus.js.add_stream(config)
                    return
                except js_errors.BadRequestError as exc:
                    if exc.err_code != _STREAM_NAME_IN_USE:
                        raise
                current = (await self.bus.js.stream_info(str(config.name))).config
                wanted = replace(
                    current,
                    subjects=config.subjects,
                    max_age=config.max_age,
                    duplicate_window=config.duplicate_window,
                    deny_delete=current.deny_delete or config.deny_delete,
                    deny_purge=current.deny_purge or config.deny_purge,
                )
                if wanted != current:
                    await self.bus.js.update_stream(wanted)

            await self.bus.with_retry(ensure, what=f"ensure stream {config.name}", deadline=self.deadline)
        self._ready = True

    async def _last(self, project: str) -> StoredRecord | None:
        try:
            raw = await self.bus.js.get_last_msg(AUDIT_STREAM, audit_subject(project))
        except js_errors.NotFoundError:
            return None
        return StoredRecord(raw.seq or 0, json.loads(raw.data or b"{}"))

    async def append(self, change: AuditChange) -> AuditRecord | None:
        """Add `change` at the end of its project's chain and return it as stored.

        A change whose dedupe key was stored already (within the duplicate window, or as the last
        record) is not stored again: the chain is unchanged and the answer is None.
        """
        if not self._ready:
            await self.ensure_streams()
        subject = audit_subject(change.project)
        for attempt in range(_MAX_ATTEMPTS):
            last = await self.bus.with_retry(
                lambda: self._last(change.project), what="read the audit chain", deadline=self.deadline
            )
            if last is not None and last.document.get("dedupe_key") == change.dedupe_key:
                log.info("audit change already recorded", dedupe_key=change.dedupe_key)
                return None
            index = (last.document["index"] + 1) if last is not None else 1
            prev_hash = last.document["hash"] if last is not None else GENESIS_HASH
            document = seal(change, index=index, prev_hash=prev_hash)
            headers = {
                MSG_ID_HEADER: f"audit:{change.project}:{change.dedupe_key}",
                EXPECTED_LAST_SUBJECT_SEQ: str(last.seq if last is not None else 0),
            }
            data = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
            try:
                ack = await self.bus.publish_raw(subject, data, headers, deadline=self.deadline)
            except js_errors.APIError as exc:
                if exc.err_code != _WRONG_LAST_SEQUENCE:
                    raise
                # another writer appended first: chain to its record instead
                await asyncio.sleep(random.uniform(0, 0.005 * min(attempt + 1, 20)))
                continue
            if ack.duplicate:
                log.info("audit change already recorded", dedupe_key=change.dedupe_key)
                return None
            _RECORDED.labels(change.action.value).inc()
            await self._maybe_anchor(change.project, index, document["hash"])
            return AuditRecord.from_document(document)
        raise RuntimeError(f"audit: could not append to {subject} after {_MAX_ATTEMPTS} concurrent attempts")

    async def _maybe_anchor(self, project: str, index: int, hash_: str) -> None:
        now = asyncio.get_running_loop().time()
        last = self._last_anchor.get(project)
        due = index % self.settings.anchor_every == 0 or last is None or now - last >= self.settings.anchor_interval_s
        if due:
            await self.anchor(project, index, hash_)
            self._last_anchor[project] = now

    async def anchor(self, project: str, index: int | None = None, hash_: str | None = None) -> Anchor | None:
        """Checkpoint `project`'s chain at record `index` (default: its last record) in AUDIT_ANCHORS."""
        if index is None or hash_ is None:
            last = await self._last(project)
            if last is None:
                return None
            index, hash_ = last.document["index"], last.document["hash"]
        anchor = Anchor(project, index, hash_, datetime.now(UTC).isoformat())
        data = json.dumps(anchor.document(), separators=(",", ":")).encode()
        ack = await self.bus.publish_raw(
            anchor_subject(project), data, {MSG_ID_HEADER: f"anchor:{project}:{index}:{hash_}"}, deadline=self.deadline
        )
        return replace(anchor, seq=ack.seq)

    async def _messages(self, stream: str, subject: str) -> AsyncIterator[tuple[int, bytes]]:
        """The messages on `subject` up to the stream's last sequence now, oldest first."""
        try:
            state = (await self.bus.js.stream_info(stream)).state
        except js_errors.NotFoundError:
            return
        seq = max(state.first_seq, 1)
        while seq <= state.last_seq:
            try:
                raw = await self.bus.js.get_msg(stream, seq=seq, subject=subject, next=True)
            except js_errors.NotFoundError:
                return
            if (raw.seq or 0) > state.last_seq:
                return
            yield raw.seq or seq, raw.data or b""
            seq = (raw.seq or seq) + 1

    async def stored(self, project: str) -> list[StoredRecord]:
        """Every record of `project` the store holds, in stream order, as stored (unchecked)."""
        out: list[StoredRecord] = []
        async for seq, data in self._messages(AUDIT_STREAM, audit_subject(project)):
            try:
                document: Any = json.loads(data)
            except ValueError:
                document = {}
            out.append(StoredRecord(seq, document if isinstance(document, dict) else {}))
        return out

    async def records(self, project: str) -> list[AuditRecord]:
        """Every readable record of `project`, oldest first (verify separately: this does not check hashes)."""
        out: list[AuditRecord] = []
        for stored in await self.stored(project):
            try:
                out.append(AuditRecord.from_document(stored.document))
            except ValueError:
                continue
        return out

    async def anchors(self, project: str) -> list[Anchor]:
        out: list[Anchor] = []
        async for seq, data in self._messages(ANCHOR_STREAM, anchor_subject(project)):
            try:
                doc = json.loads(data)
                out.append(Anchor(doc["project"], int(doc["index"]), str(doc["hash"]), str(doc["time"]), seq))
            except (ValueError, KeyError, TypeError):
                continue
        return out

    async def projects(self) -> list[str]:
        """The projects that have records."""
        try:
            info = await self.bus.js.stream_info(AUDIT_STREAM, subjects_filter=f"{AUDIT_PREFIX}>")
        except js_errors.NotFoundError:
            return []
        return sorted(subject.removeprefix(AUDIT_PREFIX) for subject in (info.state.subjects or {}))

    async def verify(self, project: str) -> VerifyReport:
        """Check `project`'s chain and its anchors; the report names the first broken place."""
        return verify_chain(project, await self.stored(project), await self.anchors(project))
