"""The detached stack's supervisor: `python -m gallery_cli.supervise`, started by `gallery up --detach`.

It starts the stack exactly as `gallery up` in the foreground would, tells the `gallery up` that started
it how that went (one JSON object a line on `--report-fd`: `{"ready": NAME}` per service, then
`{"up": [records]}` or `{"failed": message}`), then keeps the stack running (see `supervisor.py`)
until SIGTERM. `gallery down` leaves its stop marker, stops the rest while this only reaps, then sends
SIGTERM, which ends it alone; any other SIGTERM stops the whole stack first.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from types import FrameType
from typing import IO, Any

from gallery_common.service import ServiceSpec, ServiceSpecError, discover_services, find_service, service_names
from gallery_common.settings import SettingsError, load_settings

from .records import StackError, StopResult, read_stack, remove_stack, stop_marker, stop_processes
from .stack import StackLauncher
from .supervisor import StackSettings, Supervisor


class Stopped(Exception):
    """SIGTERM, SIGHUP or SIGINT arrived: stop as for Ctrl-C."""


def _raise_stopped(signum: int, _: FrameType | None) -> None:
    raise Stopped(signal.Signals(signum).name)


Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


@contextmanager
def signals_handled(handler: Handler, *signums: signal.Signals) -> Iterator[None]:
    """While inside, `handler` handles the given signals; the previous handlers come back after."""
    previous = {sig: signal.signal(sig, handler) for sig in signums}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stop_signals_raise(*signums: signal.Signals) -> AbstractContextManager[None]:
    """While inside, the given signals raise `Stopped` in the main thread."""
    return signals_handled(_raise_stopped, *signums)


def chosen_services(names: list[str] | None) -> list[ServiceSpec]:
    """The named services (importing only their own spec modules), or every installed one."""
    if not names:
        return discover_services()
    found = {name: find_service(name) for name in dict.fromkeys(names)}
    unknown = [name for name, spec in found.items() if spec is None]
    if unknown:
        raise StackError(f"not installed: {', '.join(unknown)} (installed: {', '.join(service_names()) or 'none'})")
    return sorted((spec for spec in found.values() if spec is not None), key=lambda spec: spec.port)


def is_ours(launcher: StackLauncher) -> bool:
    """stack.json still records what this launcher started (`gallery down` and a new `gallery up` replace it)."""
    recorded = read_stack(launcher.path)
    ours = {(p.pid, p.create_time) for p in launcher.stack.processes}
    return recorded is not None and {(p.pid, p.create_time) for p in recorded.processes} <= ours


def stop_stack(launcher: StackLauncher) -> list[StopResult]:
    """Stop everything this launcher started but the calling supervisor, and drop the record if it is ours."""
    results = stop_processes(launcher.stack, kinds=("service", "nats"))
    launcher.exited()  # reap our children, reporting nothing: they were stopped on purpose
    if is_ours(launcher):
        remove_stack(launcher.path)
    return results


def stopped_by_down(launcher: StackLauncher) -> bool:
    return stop_marker(launcher.home).exists()


class Reporter:
    """JSON lines to the `gallery up` waiting on the other end of a pipe; a log line for each as well."""

    def __init__(self, stream: IO[str] | None) -> None:
        self.stream = stream

    def send(self, **message: object) -> None:
        log("the stack is up" if "up" in message else json.dumps(message, default=str))
        if self.stream is None:
            return
        try:
            self.stream.write(json.dumps(message, default=str) + "\n")
            self.stream.flush()
        except OSError:  # `gallery up` went away; the stack runs on regardless
            self.stream = None

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None


def log(message: str) -> None:
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gallery_cli.supervise", description=__doc__)
    parser.add_argument("--only", action="append", default=None, help="start just this service (repeatable)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the services")
    parser.add_argument("--report-fd", type=int, default=None, help="file descriptor to report the start on")
    args = parser.parse_args(argv)
    reporter = Reporter(os.fdopen(args.report_fd, "w") if args.report_fd is not None else None)
    try:
        settings = load_settings(StackSettings)
        launcher = StackLauncher(settings)
    except SettingsError as exc:
        reporter.send(failed=str(exc.code))
        return 2
    with stop_signals_raise(signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        try:
            services = chosen_services(args.only)
            launcher.check_can_start(services)
            launcher.record_supervisor(os.getpid(), launcher.home / "logs" / "supervisor.log")
            launcher.start_all(services, args.timeout, on_ready=lambda record: reporter.send(ready=record.name))
        except (StackError, ServiceSpecError) as exc:
            reporter.send(failed=str(exc))
            stop_stack(launcher)
            return 1
        except Stopped as exc:
            reporter.send(failed=f"stopped by {exc} while starting")
            stop_stack(launcher)
            return 1
        reporter.send(up=[asdict(p) for p in launcher.stack.processes])
        reporter.close()
        supervisor = Supervisor(launcher, settings.restart_policy, report=log)
        try:
            supervisor.watch(lambda: False)
        except Stopped as exc:
            log(f"{exc} received")
        if stopped_by_down(launcher):
            log("stopped by `gallery down`")
            return 0
        if supervisor.all_failed:
            log("every process of the stack failed")
        for result in stop_stack(launcher):
            log(f"{result.record.name} (pid {result.record.pid}): {result.outcome}")
    return 1 if supervisor.all_failed else 0


if __name__ == "__main__":
    sys.exit(main())
