"""Keeping the embedded stack running: a process that exits without being asked is started again.

As systemd's `Restart=on-failure` or compose's `restart: unless-stopped` would: after an exponential
backoff (0.5 s, 1 s, 2 s, ... up to 30 s), on the same ports, nats-server on the same store. A process
that exits `max_restarts` times within `window_s` is in a crash loop: it is left stopped, marked
`failed`, and the reason says so. Each restart and the last exit reason are kept in stack.json, which
`gallery status` shows.

Only what `StackLauncher` started is supervised, and only once the whole stack was ready: a service
that cannot start at all fails `gallery up` instead of looping.
"""

from __future__ import annotations

import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from pydantic import Field

from gallery_common.settings import GallerySettings

from .records import ProcessRecord, StackError, stop_marker
from .stack import StackLauncher, tail


@dataclass(frozen=True)
class RestartPolicy:
    """How soon and how often a process is started again."""

    first_delay_s: float = 0.5
    max_delay_s: float = 30.0
    max_restarts: int = 5
    window_s: float = 120.0

    def delay(self, recent_exits: int) -> float:
        """Seconds to wait before the restart that follows `recent_exits` exits within the window."""
        return float(min(self.first_delay_s * 2 ** max(recent_exits - 1, 0), self.max_delay_s))


class StackSettings(GallerySettings):
    """`gallery up`'s settings: the common ones and how its supervisor restarts what exits."""

    restart_first_delay_s: float = Field(default=0.5, gt=0, le=60, description="wait before the first restart")
    restart_max_delay_s: float = Field(default=30.0, gt=0, le=3600, description="longest wait between restarts")
    restart_limit: int = Field(
        default=5, ge=0, le=1000, description="restarts within the window before a crash loop is given up"
    )
    restart_window_s: float = Field(default=120.0, gt=0, description="the window restarts are counted in")

    @property
    def restart_policy(self) -> RestartPolicy:
        return RestartPolicy(
            self.restart_first_delay_s, self.restart_max_delay_s, self.restart_limit, self.restart_window_s
        )


def exit_reason(code: int, log: str) -> str:
    """`killed by SIGKILL`, or `exited with code 1: <the log's last line>`."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    last = next((line.strip() for line in reversed(tail(log, 5).splitlines()) if line.strip()), "")
    reason = f"exited with code {code}"
    return f"{reason}: {last[:200]}" if last else reason


@dataclass
class _Watch:
    exits: deque[float] = field(default_factory=deque)
    restart_at: float | None = None


Report = Callable[[str], None]


class Supervisor:
    """Restarts the processes of `launcher` that exit, until told to stop."""

    def __init__(self, launcher: StackLauncher, policy: RestartPolicy | None = None, report: Report | None = None):
        self.launcher = launcher
        self.policy = policy or RestartPolicy()
        self.report = report or (lambda _: None)
        self._watches: dict[str, _Watch] = {}

    def _record(self, name: str) -> ProcessRecord:
        return next(p for p in self.launcher.stack.processes if p.name == name)

    @property
    def stopping(self) -> bool:
        """`gallery down` is stopping the stack: nothing is restarted, exits are only reaped."""
        return stop_marker(self.launcher.home).exists()

    def step(self, now: float | None = None) -> None:
        """Note the processes that exited and start again those whose backoff has passed."""
        now = time.monotonic() if now is None else now
        exits = self.launcher.exited()
        if self.stopping:
            return
        for exited, code in exits:
            self._on_exit(self._record(exited.name), code, now)
        for name, watch in self._watches.items():
            if watch.restart_at is not None and now >= watch.restart_at and not self.stopping:
                watch.restart_at = None
                self._restart(self._record(name))

    def _on_exit(self, record: ProcessRecord, code: int, now: float) -> None:
        watch = self._watches.setdefault(record.name, _Watch())
        watch.exits.append(now)
        while watch.exits and now - watch.exits[0] > self.policy.window_s:
            watch.exits.popleft()
        reason = exit_reason(code, record.log)
        if len(watch.exits) > self.policy.max_restarts:
            reason = (
                f"crash loop: exited {len(watch.exits)} times in {self.policy.window_s:g} s, left stopped; "
                f"last: {reason}"
            )
            self.launcher.update(replace(record, last_exit=reason, state="failed"))
            self.report(f"{record.name} {reason} (log: {record.log})")
            return
        delay = self.policy.delay(len(watch.exits))
        watch.restart_at = now + delay
        self.launcher.update(replace(record, last_exit=reason, state="restarting"))
        self.report(f"{record.name} (pid {record.pid}) {reason}; restarting in {delay:g} s")

    def _restart(self, record: ProcessRecord) -> None:
        counted = replace(record, restarts=record.restarts + 1, state="running")
        try:
            fresh = self.launcher.restart(counted)
        except (StackError, OSError) as exc:
            # could not even start: counts as one more exit, so a hopeless case still ends as a crash loop
            self.report(f"{record.name} could not be started again: {exc}")
            self.launcher.update(replace(counted, state="restarting"))
            self._on_exit(counted, 1, time.monotonic())
            return
        self.report(f"{fresh.name} restarted (pid {fresh.pid}, restart {fresh.restarts})")

    @property
    def all_failed(self) -> bool:
        supervised = [p for p in self.launcher.stack.processes if p.kind != "supervisor"]
        return bool(supervised) and all(p.state == "failed" for p in supervised)

    def watch(self, should_stop: Callable[[], bool], interval: float = 0.2) -> None:
        """Supervise until `should_stop()` or every process has failed.

        While `gallery down` stops the stack it keeps reaping what exits, until `gallery down` stops it too.
        """
        while not should_stop() and not self.all_failed:
            self.step()
            time.sleep(interval)
