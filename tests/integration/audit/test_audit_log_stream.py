"""The audit trail on a real nats-server: concurrent writers, redelivery, refused deletes, tampering found."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.js import errors as js_errors

from gallery_common.audit import AuditAction, AuditChange, seal
from gallery_common.audit_log import AUDIT_STREAM, AuditLog, AuditSettings, audit_subject
from gallery_common.bus import EventBus
from gallery_common.nats_server import EmbeddedNats

WRITER = Path(__file__).with_name("audit_writer_proc.py")


@pytest.fixture
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[EventBus]:
    async with EventBus(nats_server.url, "audit-test", publish_deadline=10) as connected:
        yield connected


def _change(i: int, **fields: object) -> AuditChange:
    base: dict[str, object] = dict(
        actor="admin-1", action=AuditAction.alias_move, model="iris", alias="production",
        target="iris@production", before={"version": i}, after={"version": i + 1}, reason=f"step {i}",
        dedupe_key=f"req-{i}",
    )  # fmt: skip
    base.update(fields)
    return AuditChange.model_validate(base)


async def test_two_writer_processes_keep_one_valid_chain(nats_server: EmbeddedNats, bus: EventBus) -> None:
    await AuditLog(bus).ensure_streams()
    count = 25
    procs = [
        subprocess.Popen([sys.executable, str(WRITER), nats_server.url, name, str(count)])
        for name in ("deployer-a", "deployer-b")
    ]
    for proc in procs:
        assert await asyncio.to_thread(proc.wait, 120) == 0
    audit = AuditLog(bus)
    records = await audit.records("default")
    assert len(records) == 2 * count
    assert [r.index for r in records] == list(range(1, 2 * count + 1))
    assert {r.actor for r in records} == {"service:deployer-a", "service:deployer-b"}
    report = await audit.verify("default")
    assert report.ok, report.broken
    assert report.anchors >= 1


async def test_a_redelivered_change_is_recorded_once(bus: EventBus) -> None:
    audit = AuditLog(bus)
    first = await audit.append(_change(1, dedupe_key="event-42"))
    assert first is not None
    await audit.append(_change(2))
    again = await audit.append(_change(1, dedupe_key="event-42"))  # the same event, redelivered
    assert again is None
    assert [r.dedupe_key for r in await audit.records("default")] == ["event-42", "req-2"]
    # right after itself too (the check that outlives the duplicate window)
    assert await AuditLog(bus).append(_change(2)) is None
    assert len(await audit.records("default")) == 2


async def test_the_audit_stream_refuses_deletes_and_purges(bus: EventBus) -> None:
    audit = AuditLog(bus, AuditSettings(retention_days=30))
    await audit.append(_change(1))
    info = await bus.js.stream_info(AUDIT_STREAM)
    assert info.config.deny_delete and info.config.deny_purge
    assert info.config.max_age == pytest.approx(30 * 86_400)
    with pytest.raises(js_errors.APIError):
        await bus.js.delete_msg(AUDIT_STREAM, 1)
    with pytest.raises(js_errors.APIError):
        await bus.js.purge_stream(AUDIT_STREAM)
    assert len(await audit.records("default")) == 1
    # a service asking for an unprotected stream later does not lift the protection
    await AuditLog(bus, protect=False).ensure_streams()
    assert (await bus.js.stream_info(AUDIT_STREAM)).config.deny_delete


async def test_projects_have_their_own_chains(bus: EventBus) -> None:
    audit = AuditLog(bus)
    await audit.append(_change(1))
    await audit.append(_change(1, project="fraud"))
    await audit.append(_change(2, project="fraud"))
    assert await audit.projects() == ["default", "fraud"]
    assert [r.index for r in await audit.records("fraud")] == [1, 2]
    assert (await audit.verify("fraud")).ok and (await audit.verify("default")).ok


async def _tamperable(bus: EventBus, n: int) -> AuditLog:
    audit = AuditLog(bus, protect=False)
    for i in range(1, n + 1):
        await audit.append(_change(i))
    assert (await audit.verify("default")).ok
    return audit


async def test_a_deleted_record_is_found_and_located(bus: EventBus) -> None:
    audit = await _tamperable(bus, 4)
    await bus.js.delete_msg(AUDIT_STREAM, 2)
    report = await audit.verify("default")
    assert report.broken is not None
    assert (report.broken.kind, report.broken.index, report.broken.seq) == ("deleted", 3, 3)
    assert "record 2 missing" in report.broken.message


async def test_an_edit_by_republishing_is_found_and_located(bus: EventBus) -> None:
    audit = await _tamperable(bus, 3)
    original = (await audit.stored("default"))[1]
    edited = dict(original.document, reason="it was always like this")
    await bus.js.delete_msg(AUDIT_STREAM, original.seq)
    await bus.js.publish(audit_subject("default"), json.dumps(edited).encode())
    report = await audit.verify("default")
    assert report.broken is not None
    assert (report.broken.kind, report.broken.index) == ("deleted", 3)  # the first place it shows


async def test_an_edited_record_in_place_of_the_last_is_found(bus: EventBus) -> None:
    audit = await _tamperable(bus, 3)
    last = (await audit.stored("default"))[-1]
    await bus.js.delete_msg(AUDIT_STREAM, last.seq)
    forged = dict(last.document, actor="someone-else")
    await bus.js.publish(audit_subject("default"), json.dumps(forged).encode())
    report = await audit.verify("default")
    assert report.broken is not None
    assert (report.broken.kind, report.broken.index, report.broken.seq) == ("edited", 3, last.seq + 1)


async def test_a_forged_record_and_a_rewritten_tail_are_found(bus: EventBus) -> None:
    audit = await _tamperable(bus, 3)  # the first record was anchored
    stored = await audit.stored("default")
    await audit.anchor("default")  # anchor record 3
    # someone rewrites the chain from record 2 on, consistently, after deleting the originals
    for record in stored[1:]:
        await bus.js.delete_msg(AUDIT_STREAM, record.seq)
    prev = stored[0].document["hash"]
    for i in (2, 3):
        doc = seal(_change(i, actor="mallory"), index=i, prev_hash=prev)
        prev = doc["hash"]
        await bus.js.publish(audit_subject("default"), json.dumps(doc).encode())
    report = await audit.verify("default")
    assert report.broken is not None
    assert (report.broken.kind, report.broken.index) == ("rewritten", 3)
    # a forged record appended at the end without the chain's last hash
    forged = seal(_change(9, actor="mallory"), index=4, prev_hash="0" * 64)
    await bus.js.publish(audit_subject("default"), json.dumps(forged).encode())
    broken = (await audit.verify("default")).broken
    assert broken is not None and broken.kind == "reordered" and broken.index == 4
