"""A process that appends COUNT changes to the default project's audit chain as WRITER.

usage: audit_writer_proc.py NATS_URL WRITER COUNT

Two of these at once are two services (or replicas) writing one chain concurrently.
"""

from __future__ import annotations

import asyncio
import sys

from gallery_common.audit import AuditAction, AuditChange
from gallery_common.audit_log import AuditLog
from gallery_common.bus import EventBus


async def main(url: str, writer: str, count: int) -> None:
    async with EventBus(url, writer) as bus:
        audit = AuditLog(bus)
        for i in range(count):
            change = AuditChange(
                actor=f"service:{writer}",
                action=AuditAction.deployment,
                target=f"iris/{i}",
                after={"writer": writer, "i": i},
                dedupe_key=f"{writer}:{i}",
            )
            await audit.append(change)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
