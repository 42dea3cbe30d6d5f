"""Audit trail costs: how long one recorded change takes, how the chain holds up under concurrent writers,
and how long `verify` takes over a chain.

Starts its own nats-server (JetStream, `sync_interval: always`, as shipped) in a temp dir and prints:

- one writer: per-append latency p50 / p99 (read the last record, seal, publish with the expected
  subject sequence, wait for the stream's acknowledgement);
- W writers on their own connections appending to one project at once: records/s, the share of
  appends that had to retry (another writer got there first) and whether the chain still verifies;
- verify: seconds to read and check the whole chain.

    .venv/bin/python bench/audit.py [--records 500] [--writers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from gallery_common.audit import AuditAction, AuditChange
from gallery_common.audit_log import AuditLog
from gallery_common.bus import EventBus
from gallery_common.nats_server import EmbeddedNats


def _change(writer: str, i: int) -> AuditChange:
    return AuditChange(
        actor=f"service:{writer}",
        action=AuditAction.deployment,
        model="iris",
        target=f"iris/{i}",
        before={"version": i - 1},
        after={"version": i, "stage": "production"},
        reason="bench",
        dedupe_key=f"{writer}:{i}",
    )


async def one_writer(url: str, records: int) -> list[float]:
    async with EventBus(url, "bench-one") as bus:
        audit = AuditLog(bus)
        await audit.ensure_streams()
        took = []
        for i in range(records):
            started = time.perf_counter()
            await audit.append(_change("one", i).model_copy(update={"project": "single"}))
            took.append(time.perf_counter() - started)
        return took


class CountingLog(AuditLog):
    """An AuditLog that counts its reads of the last record: one per attempt."""

    reads = 0

    async def _last(self, project: str):  # type: ignore[no-untyped-def]
        CountingLog.reads += 1
        return await super()._last(project)


async def many_writers(url: str, writers: int, records: int) -> tuple[float, float, bool, float]:
    buses = [await EventBus(url, f"bench-w{w}").connect() for w in range(writers)]
    try:
        per_writer = records // writers

        async def write(w: int) -> None:
            audit = CountingLog(buses[w])
            for i in range(per_writer):
                await audit.append(_change(f"w{w}", i).model_copy(update={"project": "shared"}))

        CountingLog.reads = 0
        started = time.perf_counter()
        await asyncio.gather(*(write(w) for w in range(writers)))
        elapsed = time.perf_counter() - started
        total = per_writer * writers
        retried = (CountingLog.reads - total) / total
        checking = time.perf_counter()
        report = await AuditLog(buses[0]).verify("shared")
        verify_s = time.perf_counter() - checking
        assert report.records == total, report
        return total / elapsed, retried, report.ok, verify_s
    finally:
        for bus in buses:
            await bus.close()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(Path(tmp) / "nats").start() as server:
        took = await one_writer(server.url, args.records)
        ms = sorted(t * 1000 for t in took)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        print(f"one writer, {args.records} records: append p50 {statistics.median(ms):.2f} ms, p99 {p99:.2f} ms")
        rate, retried, ok, verify_s = await many_writers(server.url, args.writers, args.records)
        print(
            f"{args.writers} writers, one chain: {rate:.0f} records/s, {retried * 100:.0f} % of appends retried, "
            f"chain {'verifies' if ok else 'BROKEN'}; verify of {args.records} records {verify_s:.2f} s"
        )
        if not ok:
            raise SystemExit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--writers", type=int, default=4)
    asyncio.run(main(parser.parse_args()))
