"""How a service records its changes: straight into the audit log, or into a local outbox until it can.

A change is recorded after it is made (an alias moved in the registry's database, a route written),
so a failure to record cannot undo it, and failing the request would tell the caller the change did
not happen when it did. Instead a change the store cannot take now (NATS down, the stream full) goes
to an outbox file, `$GALLERY_HOME/audit/outbox-<service>.jsonl`, written and fsynced before the
request answers; a background task appends the outbox in order once the store is back, and a restart
picks up where it left off. Since each change keeps its dedupe key, a change appended twice (the
process died between the append and the outbox rewrite) is stored once.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from . import telemetry
from .audit import AuditChange, current_trace_id
from .audit_log import AuditLog

if TYPE_CHECKING:
    from .bus import EventBus
    from .settings import GallerySettings

log = telemetry.get_logger(__name__)
_QUEUED = telemetry.gauge("audit_outbox_events", "Changes waiting in this process's audit outbox.")
_RECORD_TIMEOUT_S = 60.0


class AuditTrail:
    """A service's recorder: `record` (on the event loop) or `record_threadsafe` (from a worker thread)."""

    def __init__(
        self,
        audit_log: AuditLog,
        outbox: Path,
        *,
        service: str,
        loop: asyncio.AbstractEventLoop | None = None,
        flush_interval_s: float = 5.0,
    ) -> None:
        self.log = audit_log
        self.outbox = outbox
        self.service = service
        self.loop = loop
        self.flush_interval_s = flush_interval_s
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def service_actor(self) -> str:
        """The actor of a change this service makes on its own (on an event): `service:<name>`."""
        return f"service:{self.service}"

    def _pending(self) -> list[AuditChange]:
        if not self.outbox.exists():
            return []
        lines = self.outbox.read_text().splitlines()
        return [AuditChange.model_validate_json(line) for line in lines if line.strip()]

    def _write_pending(self, changes: list[AuditChange]) -> None:
        self.outbox.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.outbox.with_suffix(".tmp")
        with open(temporary, "w") as out:
            out.writelines(change.model_dump_json() + "\n" for change in changes)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.outbox)
        _QUEUED.set(len(changes))

    async def record(self, change: AuditChange) -> bool:
        """Record `change` (with the current trace id if it has none); True if it is in the audit log
        now, False if it waits in the outbox."""
        if change.trace_id is None:
            change = change.model_copy(update={"trace_id": current_trace_id()})
        async with self._lock:
            pending = self._pending()
            if not pending:
                try:
                    await self.log.append(change)
                    return True
                except Exception as exc:  # whatever failed, the change must not be lost
                    log.error("audit log unavailable; change kept in the outbox", error=repr(exc), target=change.target)
            await asyncio.to_thread(self._write_pending, [*pending, change])
            return False

    def record_threadsafe(self, change: AuditChange) -> bool:
        """`record` from a worker thread (a plain `def` route), on the loop that owns the bus."""
        if self.loop is None:
            raise RuntimeError("AuditTrail.record_threadsafe needs the event loop it was built with")
        if change.trace_id is None:
            change = change.model_copy(update={"trace_id": current_trace_id()})
        return asyncio.run_coroutine_threadsafe(self.record(change), self.loop).result(_RECORD_TIMEOUT_S)

    async def flush(self) -> int:
        """Append what waits in the outbox, oldest first, until done or the log fails; the number appended."""
        async with self._lock:
            pending = self._pending()
            done = 0
            for change in pending:
                try:
                    await self.log.append(change)
                except Exception as exc:
                    log.warning("audit outbox: the log is still unavailable", error=repr(exc), waiting=len(pending))
                    break
                done += 1
            if done:
                await asyncio.to_thread(self._write_pending, pending[done:])
                log.info("audit outbox appended", changes=done, waiting=len(pending) - done)
            return done

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            try:
                await self.flush()
            except Exception as exc:  # the next round tries again
                log.warning("audit outbox flush failed", error=repr(exc))

    def start(self) -> None:
        """Flush the outbox every `flush_interval_s` in the background (until `stop`)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"audit-outbox:{self.service}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def outbox_path(home: Path, service: str) -> Path:
    return home / "audit" / f"outbox-{service}.jsonl"


async def open_service_trail(settings: GallerySettings, bus: EventBus, stack: AsyncExitStack) -> AuditTrail:
    """The audit trail of the service `settings` names, on `bus`: its outbox under GALLERY_HOME, appended
    in the background from now (what an earlier run left first) until `stack` closes."""
    from .audit_log import AuditSettings

    trail = AuditTrail(
        AuditLog(bus, AuditSettings()),
        outbox_path(settings.home.resolve(), settings.service_name),
        service=settings.service_name,
        loop=asyncio.get_running_loop(),
    )
    trail.start()
    stack.push_async_callback(trail.stop)
    return trail
