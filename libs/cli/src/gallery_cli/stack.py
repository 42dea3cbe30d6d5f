"""Starting the local stack: nats-server plus every installed service, each its own process.

Plain Python with no terminal output, so the CLI and the tests drive it the same way. Each process
is recorded in stack.json (see `records.py`) as soon as it starts.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil

from gallery_common.nats_auth import authorization_block, ensure_passwords, principals
from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port
from gallery_common.service import ServiceSpec
from gallery_common.settings import GallerySettings

from .records import (
    LOCAL_HOST,
    ProcessRecord,
    Stack,
    StackError,
    log_path,
    read_stack,
    running_processes,
    stack_path,
    write_stack,
)

DEFAULT_NATS_PORT = 4222
DEFAULT_MONITOR_PORT = 8222


def port_in_use(port: int, host: str = LOCAL_HOST) -> bool:
    """True when something listens on host:port (SO_REUSEADDR, so TIME_WAIT leftovers don't count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def nats_port(settings: GallerySettings) -> int:
    """The port of the first URL in GALLERY_NATS_URL; nats-server's default when it has none."""
    first = settings.nats_url.split(",")[0].strip()
    return urlsplit(first).port or DEFAULT_NATS_PORT


def service_url(settings: GallerySettings, port: int) -> str:
    host = settings.bind_host
    if host in ("0.0.0.0", "::", ""):
        host = LOCAL_HOST
    return f"http://{host}:{port}"


def tail(path: Path | str, lines: int = 20) -> str:
    """The last lines of a log file ('' if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
    except OSError:
        return ""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def stack_authorization(home: Path, services: Sequence[str], projects: Sequence[str] = ()) -> str:
    """nats-server's users for this stack: passwords made once under `home`, bcrypt hashes in the config;
    `projects` adds the project-bound users (`<service>_<project>`, GALLERY_NATS_PROJECT_USERS)."""
    import bcrypt

    table = principals(services, projects)
    passwords = ensure_passwords(home, table)
    # cost 10 keeps a login near 50 ms; the passwords are 256-bit random, not guessable by brute force
    hashes = {user: bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=10)).decode() for user, pw in passwords.items()}
    return authorization_block(table, hashes)


@dataclass
class Launch:
    """A process started in this session: its record and, while we are its parent, its handle."""

    record: ProcessRecord
    popen: subprocess.Popen[bytes]


class StackLauncher:
    """Starts nats-server and the services for one GALLERY_HOME, recording each as it starts."""

    def __init__(self, settings: GallerySettings) -> None:
        self.settings = settings
        self.home = settings.home.resolve()
        self.path = stack_path(self.home)
        self.stack = Stack(home=str(self.home))
        self.launches: list[Launch] = []
        self.specs: dict[str, ServiceSpec] = {}
        self.nats: EmbeddedNats | None = None

    def check_can_start(self, services: Sequence[ServiceSpec]) -> None:
        """Refuse when a recorded stack still runs or a port we need is taken."""
        running = running_processes(read_stack(self.path))
        if running:
            names = ", ".join(f"{p.name} (pid {p.pid})" for p in running)
            raise StackError(f"a stack is already running from {self.home}: {names}; run `gallery down` first")
        wanted = [("nats", nats_port(self.settings)), *((s.name, s.port) for s in services)]
        for name, port in wanted:
            if port_in_use(port):
                raise StackError(f"port {port} for {name} is already in use on {LOCAL_HOST}")

    def _record(self, launch: Launch) -> None:
        self.launches.append(launch)
        self.update(launch.record)

    def update(self, record: ProcessRecord) -> None:
        """Put `record` in the stack in place of the one with its name (or last, when new) and write it."""
        names = [p.name for p in self.stack.processes]
        if record.name in names:
            self.stack.processes[names.index(record.name)] = record
        else:
            self.stack.processes.append(record)
        # Written after every change, so `gallery down` can clean up even if this launcher dies midway.
        write_stack(self.path, self.stack)

    def record_supervisor(self, pid: int, log: Path | None = None) -> ProcessRecord:
        """Record the process that keeps the stack running (`gallery up` itself, or its detached supervisor)."""
        record = ProcessRecord(
            name="supervisor",
            kind="supervisor",
            pid=pid,
            port=0,
            url="-",
            started=_now(),
            create_time=psutil.Process(pid).create_time(),
            log=str(log or ""),
        )
        self.stack.processes.insert(0, record)
        write_stack(self.path, self.stack)
        return record

    def start_nats(self, services: Sequence[str] = (), timeout: float = 15.0) -> ProcessRecord:
        """Start nats-server with JetStream on loopback; returns once JetStream reports healthy.

        Every client must log in as its own NATS user (see `gallery_common.nats_auth`); `services` names
        the installed services, each of which gets a user. Started again (after a crash), it keeps its
        ports, its users and its store, so streams and consumers survive.
        """
        port = nats_port(self.settings)
        if self.nats is None:
            # 8222 goes with the default 4222; a stack on another port (a second stack, a test) gets a free one.
            default_pair = port == DEFAULT_NATS_PORT and not port_in_use(DEFAULT_MONITOR_PORT)
            monitor = DEFAULT_MONITOR_PORT if default_pair else free_port()
            log = log_path(self.home, "nats")
            log.parent.mkdir(parents=True, exist_ok=True)
            self.nats = EmbeddedNats(
                self.home / "nats",
                host=LOCAL_HOST,
                port=port,
                monitor_port=monitor,
                log_file=log,
                authorization=stack_authorization(self.home, services, self.settings.nats_project_user_list),
            )
        server = self.nats
        log = server.log_file or log_path(self.home, "nats")
        monitor = server.monitor_port
        try:
            server.start(timeout)
        except (RuntimeError, OSError) as exc:
            raise StackError(f"nats-server did not start: {exc}\n{tail(log)}") from None
        assert server.process is not None
        record = ProcessRecord(
            name="nats",
            kind="nats",
            pid=server.process.pid,
            port=port,
            url=server.url,
            started=_now(),
            create_time=psutil.Process(server.process.pid).create_time(),
            log=str(log),
            monitor_port=monitor,
        )
        self._record(Launch(record, server.process))
        return record

    def restart(self, record: ProcessRecord) -> ProcessRecord:
        """Start the process of `record` again, on the same ports; the new record keeps its restart history."""
        if record.kind == "nats":
            fresh = self.start_nats()
        else:
            fresh = self.start_service(self.specs[record.name], self.nats_url)
        kept = replace(fresh, restarts=record.restarts, last_exit=record.last_exit, state=record.state)
        self.launches[-1].record = kept
        self.update(kept)
        return kept

    @property
    def nats_url(self) -> str:
        return f"nats://{LOCAL_HOST}:{nats_port(self.settings)}"

    def service_env(self, spec: ServiceSpec, nats_url: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            GALLERY_NATS_URL=nats_url,
            GALLERY_SERVICE_NAME=spec.name,
            GALLERY_HOME=str(self.home),
            # Explicit, so a GALLERY_PORT in the caller's shell cannot put every service on one port.
            GALLERY_PORT=str(spec.port),
            PYTHONUNBUFFERED="1",
        )
        return env

    def start_service(self, spec: ServiceSpec, nats_url: str) -> ProcessRecord:
        """Start `python -m gallery_common.serve NAME` in its own session, logging to logs/NAME.log."""
        self.specs[spec.name] = spec
        log = log_path(self.home, spec.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "gallery_common.serve", spec.name],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.service_env(spec, nats_url),
                cwd=self.home,
                # Its own session: a Ctrl-C in the terminal reaches only `gallery up`, which stops it in order.
                start_new_session=True,
            )
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.NoSuchProcess:
            create_time = 0.0
        record = ProcessRecord(
            name=spec.name,
            kind="service",
            pid=popen.pid,
            port=spec.port,
            url=service_url(self.settings, spec.port),
            started=_now(),
            create_time=create_time,
            log=str(log),
        )
        self._record(Launch(record, popen))
        return record

    def wait_ready(
        self,
        records: Iterable[ProcessRecord],
        timeout: float = 60.0,
        on_ready: Callable[[ProcessRecord], None] | None = None,
    ) -> dict[str, str]:
        """Poll every record's health endpoint until all answer 200.

        Returns the failures: name -> reason (exited with a code, or timed out).
        """
        popens = {launch.record.name: launch.popen for launch in self.launches}
        pending = {r.name: r for r in records if r.health_url is not None}
        failures: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as client:
            while pending and time.monotonic() < deadline:
                for name, record in list(pending.items()):
                    popen = popens.get(name)
                    code = popen.poll() if popen else None
                    if code is not None:
                        failures[name] = f"exited with code {code}"
                        del pending[name]
                        continue
                    try:
                        ready = client.get(str(record.health_url)).status_code == 200
                    except httpx.HTTPError:
                        ready = False
                    if ready:
                        del pending[name]
                        if on_ready:
                            on_ready(record)
                if pending:
                    time.sleep(0.1)
        failures.update({name: f"not ready after {timeout:g}s" for name in pending})
        return failures

    def start_all(
        self,
        services: Sequence[ServiceSpec],
        timeout: float,
        on_ready: Callable[[ProcessRecord], None] | None = None,
    ) -> list[ProcessRecord]:
        """Start nats-server, then every service, and wait until all are ready.

        StackError names each service that did not become ready, why, and the end of its log.
        """
        nats = self.start_nats([spec.name for spec in services])
        if not services:
            return [nats]
        records = [self.start_service(spec, nats.url) for spec in services]
        failures = self.wait_ready(records, timeout, on_ready=on_ready)
        if failures:
            lines = []
            for name, reason in failures.items():
                record = next(r for r in records if r.name == name)
                lines += [f"{name} failed: {reason} (log: {record.log})", tail(record.log)]
            lines.append(f"{len(failures)} of {len(records)} service(s) did not become ready")
            raise StackError("\n".join(lines))
        return [nats, *records]

    def exited(self) -> list[tuple[ProcessRecord, int]]:
        """Processes started here that have exited since the last call, with their exit codes."""
        done: list[tuple[ProcessRecord, int]] = []
        still: list[Launch] = []
        for launch in self.launches:
            code = launch.popen.poll()
            if code is None:
                still.append(launch)
            else:
                done.append((launch.record, code))
        self.launches = still
        return done
