"""Recording on a real nats-server: who may write and read the trail, and a change made while NATS is
down is kept in the outbox and appended once it is back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats import errors as nats_errors

from gallery_cli.stack import stack_authorization
from gallery_common.audit import AuditAction, AuditChange
from gallery_common.audit_log import AUDIT_STREAM, AuditLog, audit_subject
from gallery_common.audit_trail import AuditTrail, outbox_path
from gallery_common.bus import EventBus
from gallery_common.errors import Unavailable
from gallery_common.nats_auth import NatsCredentials, ensure_passwords
from gallery_common.nats_server import EmbeddedNats


def _change(i: int) -> AuditChange:
    return AuditChange(
        actor="admin-1", action=AuditAction.alias_move, target="iris@production", reason=f"step {i}",
        dedupe_key=f"req-{i}",
    )  # fmt: skip


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[EmbeddedNats, Path]]:
    home = tmp_path / "home"
    server = EmbeddedNats(tmp_path / "nats", authorization=stack_authorization(home, [])).start()
    yield server, home
    server.stop()


def _bus(server: EmbeddedNats, home: Path, user: str) -> EventBus:
    creds = NatsCredentials(user, ensure_passwords(home, [user])[user])
    return EventBus(server.url, f"audit-{user}", credentials=creds, publish_deadline=5)


async def test_services_append_the_cli_verifies_and_nobody_deletes(secured: tuple[EmbeddedNats, Path]) -> None:
    server, home = secured
    for user in ("registry", "deployer"):
        async with _bus(server, home, user) as bus:
            assert await AuditLog(bus, deadline=2).append(_change(1 if user == "registry" else 2)) is not None
            # the server drops the request (a permissions violation): no answer comes
            with pytest.raises(nats_errors.TimeoutError):
                await bus.js.delete_msg(AUDIT_STREAM, 1)
            with pytest.raises(nats_errors.TimeoutError):
                await bus.js.delete_stream(AUDIT_STREAM)
    async with _bus(server, home, "cli") as cli:
        report = await AuditLog(cli).verify("default")
        assert report.ok and report.records == 2
        with pytest.raises(Unavailable):  # the operator's tool reads, it does not write
            await AuditLog(cli, deadline=1).append(_change(3))
    gateway = await _bus(server, home, "gateway").connect(ensure_streams=False)
    try:  # the data plane changes nothing of record
        with pytest.raises(Unavailable):
            await AuditLog(gateway, deadline=1).append(_change(4))
    finally:
        await gateway.close()


async def test_a_change_made_while_nats_is_down_waits_in_the_outbox(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with EventBus(nats_server.url, "audit-outbox", publish_deadline=5, reconnect_wait=0.1) as bus:
        audit = AuditLog(bus, deadline=1)
        trail = AuditTrail(audit, outbox_path(tmp_path, "registry"), service="registry")
        assert await trail.record(_change(1))
        nats_server.stop()
        assert not await trail.record(_change(2))
        assert not await trail.record(_change(3))  # queued behind the first, in order
        lines = trail.outbox.read_text().splitlines()
        assert [json.loads(line)["dedupe_key"] for line in lines] == ["req-2", "req-3"]
        assert await trail.flush() == 0  # still down: nothing lost, nothing appended
        nats_server.start()
        assert await trail.flush() == 2
        assert trail.outbox.read_text() == ""
        records = await audit.records("default")
        assert [r.dedupe_key for r in records] == ["req-1", "req-2", "req-3"]
        assert (await audit.verify("default")).ok
        info = await bus.js.stream_info(AUDIT_STREAM, subjects_filter=audit_subject("default"))
        assert info.state.messages == 3
