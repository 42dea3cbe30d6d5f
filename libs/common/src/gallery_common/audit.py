"""The audit trail's records and their hash chain: what a change looked like, and how to check a chain.

Every change that matters (an alias move, a deployment, a deletion...) becomes one `AuditRecord`:
who (`actor`: the caller's name, or `service:<name>` for a change a service made on an event), which
project, what (`action`, `target`), `before` → `after`, why (`reason`), when, and the trace id. Records
of one project form a chain: each carries its position (`index`, from 1), the hash of the record
before it (`prev_hash`) and its own `hash`, the sha256 of its canonical JSON without `hash`. Editing,
deleting or reordering a stored record breaks the chain at that place; `verify_chain` says where.

Hashes are computed over the JSON as stored (keys sorted, no spaces, UTF-8), never over a parsed
and re-serialised model, so a reader in any language can check them. Storage is `audit_log.py`.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from opentelemetry import trace
from pydantic import BaseModel, Field

DEFAULT_PROJECT = "default"
GENESIS_HASH = "0" * 64
PROJECT_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"


class AuditAction(StrEnum):
    """The kinds of change the trail records."""

    registration = "registration"
    alias_move = "alias_move"
    policy_change = "policy_change"
    deployment = "deployment"
    promotion = "promotion"
    rollback = "rollback"
    route_change = "route_change"
    experiment_decision = "experiment_decision"
    deletion = "deletion"
    permission_change = "permission_change"
    status_change = "status_change"
    metadata_change = "metadata_change"  # a model's or version's description, owner or tags
    card_edit = "card_edit"  # a model card's text (description, intended use, limitations)
    artifact_attached = "artifact_attached"  # a file attached to a version (the optimizer's variants, reports)
    scaling = "scaling"  # a version's replica count set by hand
    # the trainer's jobs, in the job's project's chain
    job_submitted = "job.submitted"
    job_cancelled = "job.cancelled"
    model_imported = "model.imported"  # a model trained elsewhere, brought in by the trainer's /imports
    # projects and their members (the registry's /api/v1/projects), in the project's own chain
    project_created = "project.created"
    member_granted = "project.member_granted"
    member_revoked = "project.member_revoked"
    # a dead letter put back for its consumer by the service that publishes it (`dead_letters_api`)
    event_redelivered = "event.redelivered"


def new_dedupe_key() -> str:
    """A dedupe key for a change that has no event or request id of its own: it is recorded as often as made."""
    return f"change:{uuid.uuid4().hex}"


class AuditChange(BaseModel):
    """A change to record, before it has its place in a chain.

    `dedupe_key` makes the change recorded once however often it is reported: the id of the event
    or request that caused it (a redelivered event carries the same id).
    """

    project: str = Field(default=DEFAULT_PROJECT, pattern=PROJECT_PATTERN)
    actor: str = Field(min_length=1, max_length=256)
    action: AuditAction
    model: str | None = None
    version: int | None = None
    alias: str | None = None
    target: str = Field(min_length=1, max_length=512, description="what changed, e.g. iris/3 or iris@production")
    before: Any = None
    after: Any = None
    reason: str | None = Field(default=None, max_length=4000)
    trace_id: str | None = None
    dedupe_key: str = Field(default_factory=lambda: new_dedupe_key(), min_length=1, max_length=256)
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))


class AuditRecord(AuditChange):
    """A change in its place in its project's chain."""

    id: str
    index: int = Field(ge=1)
    prev_hash: str
    hash: str

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> AuditRecord:
        return cls.model_validate(document)


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """The bytes a record's hash covers: sorted keys, no whitespace, UTF-8, `hash` left out."""
    body = {key: value for key, value in document.items() if key != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(document: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(document)).hexdigest()


def seal(change: AuditChange, *, index: int, prev_hash: str) -> dict[str, Any]:
    """The stored document of `change` as record `index` of its chain, after the record hashed `prev_hash`."""
    document = change.model_dump(mode="json")
    document.update(id=uuid.uuid4().hex, index=index, prev_hash=prev_hash)
    document["hash"] = record_hash(document)
    return document


def current_trace_id() -> str | None:
    """The trace id of the current span (32 hex digits), or None outside a trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


@dataclass(frozen=True)
class StoredRecord:
    """One record as read back from the store: its stream sequence and the document stored there."""

    seq: int
    document: Mapping[str, Any]


@dataclass(frozen=True)
class ChainBreak:
    """The first place a chain is not what was written: which record (stream sequence and index) and why."""

    seq: int | None
    index: int | None
    kind: str  # edited, deleted, reordered, unreadable, rewritten, truncated
    message: str


@dataclass(frozen=True)
class Anchor:
    """A checkpoint of a chain, stored apart from it: record `index` of `project` had hash `hash`."""

    project: str
    index: int
    hash: str
    time: str
    seq: int = 0  # its sequence in the anchor stream, when read back

    def document(self) -> dict[str, Any]:
        return {"project": self.project, "index": self.index, "hash": self.hash, "time": self.time}


@dataclass(frozen=True)
class VerifyReport:
    """What `verify_chain` found: how many records and anchors it checked, and the first break if any."""

    project: str
    records: int
    anchors: int
    first_index: int | None
    last_index: int | None
    last_hash: str | None
    broken: ChainBreak | None

    @property
    def ok(self) -> bool:
        return self.broken is None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "project": self.project,
            "ok": self.ok,
            "records": self.records,
            "anchors": self.anchors,
            "first_index": self.first_index,
            "last_index": self.last_index,
            "last_hash": self.last_hash,
        }
        if self.broken is not None:
            out["broken"] = {
                "seq": self.broken.seq,
                "index": self.broken.index,
                "kind": self.broken.kind,
                "message": self.broken.message,
            }
        return out


def _check_link(stored: StoredRecord, previous: Mapping[str, Any] | None) -> ChainBreak | None:
    """Why `stored` does not follow `previous` in a valid chain, or None when it does."""
    doc = stored.document
    index = doc.get("index")
    if not isinstance(index, int) or not isinstance(doc.get("hash"), str):
        return ChainBreak(stored.seq, None, "unreadable", f"stream message {stored.seq} is not an audit record")
    if record_hash(doc) != doc["hash"]:
        return ChainBreak(
            stored.seq, index, "edited", f"record {index} (stream message {stored.seq}) does not match its hash"
        )
    if previous is None:
        if index == 1 and doc.get("prev_hash") != GENESIS_HASH:
            return ChainBreak(stored.seq, index, "edited", "record 1 does not start the chain (prev_hash)")
        return None
    expected = previous["index"] + 1
    if index > expected:
        missing = f"record {expected}" if index == expected + 1 else f"records {expected} to {index - 1}"
        return ChainBreak(stored.seq, index, "deleted", f"{missing} missing before stream message {stored.seq}")
    if index < expected:
        return ChainBreak(
            stored.seq,
            index,
            "reordered",
            f"record {index} found at stream message {stored.seq}, after record {previous['index']}",
        )
    if doc.get("prev_hash") != previous["hash"]:
        return ChainBreak(
            stored.seq,
            index,
            "reordered",
            f"record {index} (stream message {stored.seq}) does not chain to record {previous['index']} before it",
        )
    return None


def verify_chain(project: str, records: Iterable[StoredRecord], anchors: Iterable[Anchor] = ()) -> VerifyReport:
    """Check a project's records (in stream order) link into one unbroken chain that agrees with its anchors.

    The chain may start after record 1 when the oldest records aged out of the store (retention);
    anchors older than the first record kept are then skipped.
    """
    by_index: dict[int, str] = {}
    previous: Mapping[str, Any] | None = None
    first: StoredRecord | None = None
    count = 0
    broken: ChainBreak | None = None
    for stored in records:
        count += 1
        broken = _check_link(stored, previous)
        if broken is not None:
            break
        first = first or stored
        previous = stored.document
        by_index[stored.document["index"]] = stored.document["hash"]
    anchor_list = list(anchors)
    first_index = first.document["index"] if first is not None else None
    last_index = previous["index"] if previous is not None else None
    if broken is None:
        for anchor in anchor_list:
            if first_index is not None and anchor.index < first_index:
                continue  # that part of the chain has aged out
            found = by_index.get(anchor.index)
            if found is None:
                broken = ChainBreak(
                    None,
                    anchor.index,
                    "truncated",
                    f"anchor {anchor.seq} pins record {anchor.index}, but the chain ends at {last_index or 0}",
                )
                break
            if found != anchor.hash:
                broken = ChainBreak(
                    None,
                    anchor.index,
                    "rewritten",
                    f"record {anchor.index} has hash {found[:12]}…, anchor {anchor.seq} pinned {anchor.hash[:12]}…",
                )
                break
    return VerifyReport(
        project=project,
        records=count,
        anchors=len(anchor_list),
        first_index=first_index,
        last_index=last_index,
        last_hash=previous["hash"] if previous is not None else None,
        broken=broken,
    )
