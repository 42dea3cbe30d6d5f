"""The audit chain: records seal into one chain, and every kind of tampering is found at its place."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from gallery_common.audit import (
    GENESIS_HASH,
    Anchor,
    AuditAction,
    AuditChange,
    StoredRecord,
    canonical_json,
    record_hash,
    seal,
    verify_chain,
)


def _chain(n: int) -> list[StoredRecord]:
    out: list[StoredRecord] = []
    prev = GENESIS_HASH
    for i in range(1, n + 1):
        change = AuditChange(
            actor="admin-1234", action=AuditAction.alias_move, model="iris", alias="production",
            target="iris@production", before={"version": i - 1}, after={"version": i}, reason=f"move {i}",
        )  # fmt: skip
        doc = seal(change, index=i, prev_hash=prev)
        prev = doc["hash"]
        out.append(StoredRecord(seq=10 + i, document=doc))
    return out


def test_a_sealed_record_hashes_its_canonical_json_with_the_previous_hash() -> None:
    records = _chain(2)
    second = dict(records[1].document)
    assert second["prev_hash"] == records[0].document["hash"]
    body = {k: v for k, v in second.items() if k != "hash"}
    expected = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert second["hash"] == expected == record_hash(second)
    assert b'"hash"' not in canonical_json(second)


def test_an_intact_chain_verifies_with_its_anchors() -> None:
    records = _chain(5)
    anchors = [Anchor("default", 3, records[2].document["hash"], "t", seq=1)]
    report = verify_chain("default", records, anchors)
    assert report.ok and report.records == 5 and report.last_index == 5 and report.anchors == 1


def test_an_edited_record_is_found_by_its_hash() -> None:
    records = _chain(4)
    edited: dict[str, Any] = dict(records[2].document)
    edited["reason"] = "nobody asked"
    records[2] = StoredRecord(records[2].seq, edited)
    report = verify_chain("default", records)
    assert report.broken is not None
    assert (report.broken.kind, report.broken.index, report.broken.seq) == ("edited", 3, 13)
    assert "record 3" in report.broken.message and "stream message 13" in report.broken.message


def test_a_deleted_record_is_a_gap_before_the_next() -> None:
    records = _chain(4)
    del records[1]
    report = verify_chain("default", records)
    assert report.broken is not None
    assert (report.broken.kind, report.broken.index) == ("deleted", 3)
    assert "record 2 missing" in report.broken.message


def test_swapped_records_are_reported_as_reordered() -> None:
    records = _chain(4)
    records[1], records[2] = records[2], records[1]
    report = verify_chain("default", records)
    assert report.broken is not None
    assert report.broken.kind == "deleted" and report.broken.index == 3  # record 3 came where 2 belonged


def test_a_replayed_older_record_is_reported_as_reordered() -> None:
    records = _chain(3)
    records.append(StoredRecord(99, records[0].document))
    report = verify_chain("default", records)
    assert report.broken is not None
    assert (report.broken.kind, report.broken.index, report.broken.seq) == ("reordered", 1, 99)


def test_a_forged_record_with_a_valid_hash_but_wrong_link_is_found() -> None:
    records = _chain(3)
    forged_change = AuditChange(actor="mallory", action=AuditAction.deletion, target="iris/2")
    forged = seal(forged_change, index=3, prev_hash="f" * 64)
    records[2] = StoredRecord(records[2].seq, forged)
    report = verify_chain("default", records)
    assert report.broken is not None
    assert (report.broken.kind, report.broken.index) == ("reordered", 3)
    assert "does not chain to record 2" in report.broken.message


def test_a_consistent_rewrite_of_the_tail_disagrees_with_the_anchor() -> None:
    records = _chain(4)
    anchor = Anchor("default", 3, records[2].document["hash"], "t", seq=7)
    rewritten = records[:2]
    prev = records[1].document["hash"]
    for i in (3, 4):
        doc = seal(
            AuditChange(actor="mallory", action=AuditAction.alias_move, target="iris@production"),
            index=i,
            prev_hash=prev,
        )
        prev = doc["hash"]
        rewritten.append(StoredRecord(20 + i, doc))
    assert verify_chain("default", rewritten).ok  # the chain alone looks fine
    report = verify_chain("default", rewritten, [anchor])
    assert report.broken is not None
    assert (report.broken.kind, report.broken.index) == ("rewritten", 3)
    assert "anchor 7" in report.broken.message


def test_a_truncated_chain_is_found_by_an_anchor_past_its_end() -> None:
    records = _chain(4)
    anchor = Anchor("default", 4, records[3].document["hash"], "t", seq=2)
    report = verify_chain("default", records[:3], [anchor])
    assert report.broken is not None and report.broken.kind == "truncated"


def test_a_chain_whose_oldest_records_expired_still_verifies() -> None:
    records = _chain(5)
    old_anchor = Anchor("default", 1, records[0].document["hash"], "t", seq=1)
    report = verify_chain("default", records[2:], [old_anchor])
    assert report.ok and report.first_index == 3


def test_record_1_must_start_at_the_genesis_hash() -> None:
    doc = seal(AuditChange(actor="a", action=AuditAction.registration, target="iris/1"), index=1, prev_hash="e" * 64)
    report = verify_chain("default", [StoredRecord(1, doc)])
    assert report.broken is not None and report.broken.kind == "edited"
