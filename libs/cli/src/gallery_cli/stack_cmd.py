"""`gallery up`, `gallery down` and `gallery status`: the terminal face of `stack.py`."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.table import Table

from gallery_common.serve import is_loopback
from gallery_common.service import ServiceSpec, ServiceSpecError, discover_services, find_service, service_names

from .console import cli_settings, console, fail, say
from .records import (
    LOCAL_HOST,
    ProcessRecord,
    Stack,
    StackError,
    StopResult,
    describe_uptime,
    read_stack,
    remove_stack,
    stack_path,
    stack_status,
    stop_processes,
)
from .stack import StackLauncher, tail


class _Stopped(Exception):
    """SIGTERM or SIGHUP arrived: stop the stack as for Ctrl-C."""


def _raise_stopped(signum: int, _: FrameType | None) -> None:
    raise _Stopped(signal.Signals(signum).name)


_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


@contextmanager
def _signals(handler: _Handler, *signums: signal.Signals) -> Iterator[None]:
    previous = {sig: signal.signal(sig, handler) for sig in signums}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _records_table(records: Sequence[ProcessRecord], state: str) -> Table:
    table = Table(title="Model Gallery stack", title_justify="left")
    for column in ("name", "PID", "URL", "state"):
        table.add_column(column, no_wrap=True)
    for record in records:
        table.add_row(record.name, str(record.pid), record.url, f"[green]{state}[/]")
    return table


def _stops_table(results: Sequence[StopResult]) -> Table:
    table = Table()
    for column in ("name", "PID", "outcome"):
        table.add_column(column, no_wrap=True)
    style = {"stopped": "green", "killed": "yellow", "not running": "dim"}
    for result in results:
        table.add_row(result.record.name, str(result.record.pid), f"[{style[result.outcome]}]{result.outcome}[/]")
    return table


def _is_ours(path: Path, stack: Stack) -> bool:
    recorded = read_stack(path)
    ours = {(p.pid, p.create_time) for p in stack.processes}
    return recorded is not None and {(p.pid, p.create_time) for p in recorded.processes} <= ours


def _shut_down(launcher: StackLauncher) -> None:
    # A second Ctrl-C must not leave half the stack running.
    with _signals(signal.SIG_IGN, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        with console.status("Stopping the stack…"):
            results = stop_processes(launcher.stack)
        launcher.exited()  # reap our children, reporting nothing: they were stopped on purpose
        # `gallery down` from elsewhere followed by a new `gallery up` must not lose the new record.
        if _is_ours(launcher.path, launcher.stack):
            remove_stack(launcher.path)
    if results:
        console.print(_stops_table(results))


def _supervise(launcher: StackLauncher) -> bool:
    """Stay in the foreground, reporting processes that exit, until none is left.

    Returns True when they were stopped by `gallery down` (which removes the record), False when they died.
    """
    while launcher.launches:
        for record, code in launcher.exited():
            say(f"{record.name} (pid {record.pid}) exited with code {code}; log: {record.log}", err=True, style="red")
        time.sleep(0.5)
    stopped_by_down = not _is_ours(launcher.path, launcher.stack)
    console.print("the stack was stopped by `gallery down`" if stopped_by_down else "every process of the stack exited")
    return stopped_by_down


def _start(launcher: StackLauncher, services: Sequence[ServiceSpec], timeout: float) -> list[ProcessRecord]:
    with console.status("Starting nats-server…"):
        nats = launcher.start_nats()
    if not services:
        console.print("no services installed: started nats-server only")
        return [nats]
    records = [launcher.start_service(spec, nats.url) for spec in services]
    with console.status(f"Waiting for {len(records)} service(s) to become ready…") as spinner:
        waiting = {r.name for r in records}

        def ready(record: ProcessRecord) -> None:
            waiting.discard(record.name)
            spinner.update(f"Waiting for {', '.join(sorted(waiting))}…")

        failures = launcher.wait_ready(records, timeout, on_ready=ready)
    for name, reason in failures.items():
        record = next(r for r in records if r.name == name)
        say(f"{name} failed: {reason} (log: {record.log})", err=True, style="red")
        say(tail(record.log), err=True)
    if failures:
        raise StackError(f"{len(failures)} of {len(records)} service(s) did not become ready")
    return [nats, *records]


def _chosen_services(names: list[str]) -> list[ServiceSpec]:
    """The named services, importing only their own spec modules (a broken other one is no obstacle)."""
    found = {name: find_service(name) for name in dict.fromkeys(names)}
    unknown = [name for name, spec in found.items() if spec is None]
    if unknown:
        raise StackError(f"not installed: {', '.join(unknown)} (installed: {', '.join(service_names()) or 'none'})")
    return sorted((spec for spec in found.values() if spec is not None), key=lambda spec: spec.port)


def up(
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Return once ready, leaving the stack running.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the services to become ready.")] = 60.0,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Start just these services (repeat the option); default: every installed one."),
    ] = None,
) -> None:
    """Start nats-server and every installed service, each as its own process."""
    launcher = StackLauncher(cli_settings())
    try:
        services = _chosen_services(only) if only else discover_services()
        launcher.check_can_start(services)
    except (ServiceSpecError, StackError) as exc:
        fail(str(exc))
    configured = urlsplit(launcher.settings.nats_url.split(",")[0].strip()).hostname
    if configured and not is_loopback(configured):
        say(f"note: GALLERY_NATS_URL names {configured}, but `gallery up` runs its own nats-server on {LOCAL_HOST}")
    failed = False
    with _signals(_raise_stopped, signal.SIGTERM, signal.SIGHUP):
        try:
            records = _start(launcher, services, timeout)
            console.print(_records_table(records, "ready"))
            say(f"logs in {launcher.home / 'logs'}, record in {launcher.path}")
            if detach:
                console.print("stop it with `gallery down`")
                return  # leaving everything running, as asked
            console.print("press Ctrl-C to stop")
            failed = not _supervise(launcher)
        except StackError as exc:
            say(str(exc), err=True)
            failed = True
        except (KeyboardInterrupt, _Stopped):
            console.print("stopping…")
    _shut_down(launcher)
    if failed:
        raise typer.Exit(1)


def down(
    timeout: Annotated[float, typer.Option(help="Seconds to wait after SIGTERM before SIGKILL.")] = 15.0,
) -> None:
    """Stop every process `gallery up` recorded: services first, nats-server last."""
    home = cli_settings().home.resolve()
    path = stack_path(home)
    try:
        stack = read_stack(path)
    except StackError as exc:
        fail(str(exc))
    if stack is None:
        say(f"no stack recorded in {home}; nothing to stop")
        return
    with console.status("Stopping the stack…"):
        results = stop_processes(stack, timeout)
    remove_stack(path)
    console.print(_stops_table(results))


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show each recorded process, whether it runs and whether it is healthy; exit 1 if any is not."""
    home = cli_settings().home.resolve()
    try:
        stack = read_stack(stack_path(home))
    except StackError as exc:
        fail(str(exc))
    if stack is None:
        if as_json:
            typer.echo("[]")
        else:
            say(f"no stack recorded in {home}; start one with `gallery up`")
        raise typer.Exit(1)
    statuses = stack_status(stack)
    if as_json:
        typer.echo(json.dumps([asdict(s.record) | {"alive": s.alive, "healthy": s.healthy} for s in statuses]))
    else:
        table = Table(title=f"Model Gallery stack in {home}", title_justify="left")
        for column in ("name", "kind", "PID", "URL", "process", "health", "uptime"):
            table.add_column(column, no_wrap=True)
        for s in statuses:
            table.add_row(
                s.record.name,
                s.record.kind,
                str(s.record.pid),
                s.record.url,
                "[green]running[/]" if s.alive else "[red]exited[/]",
                "[green]healthy[/]" if s.healthy else ("[red]unhealthy[/]" if s.alive else "[dim]-[/]"),
                describe_uptime(s.record) if s.alive else "-",
            )
        console.print(table)
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)
