"""`gallery up`, `gallery down` and `gallery status`: the terminal face of `stack.py`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer
from rich.table import Table

from gallery_common.serve import is_loopback
from gallery_common.service import ServiceSpec, ServiceSpecError

from .console import cli_settings, console, fail, say
from .records import (
    LOCAL_HOST,
    ProcessRecord,
    Stack,
    StackError,
    StopResult,
    describe_uptime,
    log_path,
    read_stack,
    remove_stack,
    stack_path,
    stack_status,
    stop_marker,
    stop_processes,
)
from .stack import StackLauncher, tail
from .supervise import (
    Stopped,
    chosen_services,
    signals_handled,
    stop_signals_raise,
    stop_stack,
    stopped_by_down,
)
from .supervisor import StackSettings, Supervisor


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


def _shut_down(launcher: StackLauncher) -> None:
    # A second Ctrl-C must not leave half the stack running.
    with signals_handled(signal.SIG_IGN, signal.SIGINT, signal.SIGTERM, signal.SIGHUP), console.status("Stopping…"):
        results = stop_stack(launcher)
    if results:
        console.print(_stops_table(results))


def _start_in_foreground(launcher: StackLauncher, services: Sequence[ServiceSpec], timeout: float) -> None:
    launcher.record_supervisor(os.getpid())
    with console.status("Starting nats-server and the services…") as spinner:
        waiting = {spec.name for spec in services}

        def ready(record: ProcessRecord) -> None:
            waiting.discard(record.name)
            spinner.update(f"Waiting for {', '.join(sorted(waiting))}…")

        records = launcher.start_all(services, timeout, on_ready=ready)
    if not services:
        console.print("no services installed: started nats-server only")
    console.print(_records_table(records, "ready"))
    say(f"logs in {launcher.home / 'logs'}, record in {launcher.path}")


def _up_foreground(launcher: StackLauncher, services: Sequence[ServiceSpec], timeout: float) -> None:
    failed = False
    policy = cli_settings(StackSettings).restart_policy
    supervisor = Supervisor(launcher, policy, report=lambda line: say(line, err=True, style="yellow"))
    with stop_signals_raise(signal.SIGTERM, signal.SIGHUP):
        try:
            _start_in_foreground(launcher, services, timeout)
            console.print("press Ctrl-C to stop; a process that exits is restarted")
            supervisor.watch(lambda: False)
            failed = supervisor.all_failed
        except StackError as exc:
            say(str(exc), err=True)
            failed = True
        except (KeyboardInterrupt, Stopped):
            pass
    if stopped_by_down(launcher):
        console.print("the stack was stopped by `gallery down`")
        return  # `gallery down` stops the processes and removes the record
    console.print("every process of the stack failed; stopping" if failed else "stopping…")
    _shut_down(launcher)
    if failed:
        raise typer.Exit(1)


def _up_detached(launcher: StackLauncher, only: list[str] | None, timeout: float) -> None:
    """Start the supervisor in its own session and report what it reports until the stack is up."""
    log = log_path(launcher.home, "supervisor")
    log.parent.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    command = [sys.executable, "-m", "gallery_cli.supervise", "--timeout", str(timeout), "--report-fd", str(write_end)]
    for name in only or []:
        command += ["--only", name]
    with open(log, "ab") as out:
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=(write_end,),
            start_new_session=True,  # outlives this terminal; `gallery down` stops it
            cwd=launcher.home,
        )
    os.close(write_end)
    outcome: dict[str, object] = {}
    try:
        with os.fdopen(read_end) as reports, console.status("Starting the stack…") as spinner:
            for line in reports:
                message = json.loads(line)
                if "ready" in message:
                    spinner.update(f"{message['ready']} is ready…")
                else:
                    outcome = message
                    break
    except KeyboardInterrupt:
        child.terminate()  # it stops what it started
        child.wait(60)
        fail("interrupted: the stack was stopped")
    if "up" in outcome:
        records = [ProcessRecord(**r) for r in outcome["up"]]  # type: ignore[attr-defined]
        console.print(_records_table([r for r in records if r.kind != "supervisor"], "ready"))
        say(f"the supervisor (pid {child.pid}) restarts what exits; logs in {launcher.home / 'logs'}")
        say(f"record in {launcher.path}")
        console.print("stop it with `gallery down`")
        return
    child.wait(60)
    fail(str(outcome.get("failed") or f"the supervisor exited with code {child.returncode}:\n{tail(log)}"))


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
    """Start nats-server and every installed service, each as its own process, and restart what exits."""
    launcher = StackLauncher(cli_settings(StackSettings))
    try:
        services = chosen_services(only)
        launcher.check_can_start(services)
    except (ServiceSpecError, StackError) as exc:
        fail(str(exc))
    configured = urlsplit(launcher.settings.nats_url.split(",")[0].strip()).hostname
    if configured and not is_loopback(configured):
        say(f"note: GALLERY_NATS_URL names {configured}, but `gallery up` runs its own nats-server on {LOCAL_HOST}")
    if detach:
        _up_detached(launcher, only, timeout)
    else:
        _up_foreground(launcher, services, timeout)


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
    marker = stop_marker(home)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()  # the supervisor restarts nothing from now on
    try:
        with console.status("Stopping the stack…"):
            results = stop_processes(stack, timeout, kinds=("service", "nats"))
            # read again: the supervisor may have restarted something as this began
            latest = _read_quietly(path) or stack
            stopped = {(r.record.pid, r.record.create_time) for r in results}
            late = Stack(stack.home, [p for p in latest.processes if (p.pid, p.create_time) not in stopped])
            results += stop_processes(late, timeout, kinds=("service", "nats"))
            results += stop_processes(stack, timeout, kinds=("supervisor",))
    finally:
        remove_stack(path)
        marker.unlink(missing_ok=True)
    console.print(_stops_table(results))


def _read_quietly(path: Path) -> Stack | None:
    try:
        return read_stack(path)
    except StackError:
        return None


def _process_state(alive: bool, state: str) -> str:
    if alive:
        return "[green]running[/]"
    return {"restarting": "[yellow]restarting[/]", "failed": "[red]failed[/]"}.get(state, "[red]exited[/]")


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
        for column in ("name", "kind", "PID", "URL", "process", "health", "uptime", "restarts", "last exit"):
            table.add_column(column, no_wrap=column != "last exit")
        for s in statuses:
            table.add_row(
                s.record.name,
                s.record.kind,
                str(s.record.pid),
                s.record.url,
                _process_state(s.alive, s.record.state),
                "[green]healthy[/]" if s.healthy else ("[red]unhealthy[/]" if s.alive else "[dim]-[/]"),
                describe_uptime(s.record) if s.alive else "-",
                str(s.record.restarts) if s.record.kind != "supervisor" else "-",
                s.record.last_exit or "-",
            )
        console.print(table)
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)
