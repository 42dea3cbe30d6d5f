"""Traffic samples for the monitor, sent on `inference.sample.<model>` off the request path.

The request path only appends to a bounded buffer; one task sends what is there while NATS is
connected and waits while it is not, so an outage of the bus costs no request anything. When the
buffer is full the oldest sample gives way (counted as `dropped`): the monitor wants recent traffic.
"""

from __future__ import annotations

import asyncio
from collections import deque

from gallery_common.bus import EventBus
from gallery_common.contracts.names import sample_subject
from gallery_common.telemetry import get_logger

from . import metrics

_RECONNECT_POLL_S = 0.25

log = get_logger(__name__)


class SampleOutbox:
    """Holds up to `capacity` samples until the bus can take them."""

    def __init__(self, bus: EventBus, capacity: int) -> None:
        self._bus = bus
        self._buffer: deque[tuple[str, bytes]] = deque()
        self._capacity = capacity
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._buffer)

    def offer(self, model: str, sample: bytes) -> None:
        """Queue one sample; never blocks and never raises."""
        if len(self._buffer) >= self._capacity:
            self._buffer.popleft()
            metrics.SAMPLES.labels(model, "dropped").inc()
        self._buffer.append((model, sample))
        self._ready.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._send_forever(), name="gateway-samples")

    async def _send_forever(self) -> None:
        while True:
            await self._ready.wait()
            if not self._buffer:
                self._ready.clear()
                continue
            if not self._bus.is_connected:
                await asyncio.sleep(_RECONNECT_POLL_S)
                continue
            model, sample = self._buffer[0]
            try:
                await self._bus.nc.publish(sample_subject(model), sample)
            except Exception as exc:  # the connection dropped between the check and the send: wait, retry
                log.debug("sample not sent yet", model=model, reason=repr(exc))
                await asyncio.sleep(_RECONNECT_POLL_S)
                continue
            self._buffer.popleft()
            metrics.SAMPLES.labels(model, "published").inc()

    async def close(self, timeout: float) -> None:
        """Send what is buffered if the bus lets that happen within `timeout` s, then stop."""
        if self._task is None:
            return
        deadline = asyncio.get_running_loop().time() + timeout
        while self._buffer and self._bus.is_connected and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if self._buffer:
            log.warning("samples not sent", count=len(self._buffer))
