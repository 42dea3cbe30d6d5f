"""One supervised model-server process: start, health checks, restart with backoff, drain on stop.

A `Replica` owns its child process from spawn to reap inside a single task, so a stop request, a
crash and a failed health check never race each other over the same process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
from pydantic import BaseModel, Field

from gallery_common.netutil import free_port
from gallery_common.processes import die_with_parent
from gallery_common.telemetry import get_logger

from .base import ReplicaStatus, ServerSpec

log = get_logger(__name__)

EXIT_CANNOT_LOAD = 1  # the model server's exit codes for problems a restart cannot fix
EXIT_BAD_SETTINGS = 2
_REASON_TAIL_BYTES = 64 * 1024


class LocalOptions(BaseModel):
    """How the local runtime runs, checks, restarts and retires model-server processes."""

    log_dir: Path = Field(description="Each replica logs to log_dir/<deployment_id>/<replica>.log.")
    host: str = Field(default="127.0.0.1", description="Address the model servers bind to and are reached at.")
    ready_timeout_s: float = Field(default=60.0, gt=0, description="A start not ready by then counts as a crash.")
    health_interval_s: float = Field(default=0.5, gt=0, description="Seconds between /v2/health/ready probes.")
    probe_timeout_s: float = Field(default=2.0, gt=0, description="Timeout of one health probe or /metrics read.")
    unhealthy_after_s: float = Field(
        default=10.0, gt=0, description="A ready replica failing probes this long is restarted."
    )
    restart_backoff_initial_s: float = Field(default=0.5, gt=0)
    restart_backoff_max_s: float = Field(default=30.0, gt=0)
    restart_reset_after_s: float = Field(
        default=60.0, gt=0, description="Up this long, a crash starts the backoff anew."
    )
    max_restarts: int = Field(default=5, ge=0, description="Restarts in a row before a crashing replica is given up.")
    drain_timeout_s: float = Field(default=30.0, gt=0, description="SIGTERM → SIGKILL after this long.")
    drain_grace_s: float = Field(
        default=0.5, ge=0, description="Pause between taking a replica out of the endpoints and SIGTERM."
    )
    idle_scale_to_zero_s: float = Field(default=0.0, ge=0, description="Scale to zero after this long idle; 0 = never.")
    idle_check_s: float = Field(default=30.0, gt=0, description="Seconds between idle checks of /metrics.")
    openvino_python: Path | None = Field(
        default=None,
        description="The interpreter of a venv with onnxruntime-openvino: runs the model servers whose policy "
        "prefers OpenVINO; None: they run on this interpreter's ONNX Runtime (the CPU provider).",
    )


def spec_key(spec: ServerSpec) -> ServerSpec:
    """What a process runs: two specs with equal keys need no rolling update (replicas and k8s quantities aside)."""
    return replace(spec, replicas=0, cpu="", memory="")


class PortBook:
    """Free loopback ports, never handing out one a live replica of this runtime still holds."""

    def __init__(self, host: str) -> None:
        self._host = host
        self._held: set[int] = set()

    def take(self) -> int:
        while (port := free_port(self._host)) in self._held:
            pass
        self._held.add(port)
        return port

    def release(self, port: int) -> None:
        self._held.discard(port)


@dataclass(frozen=True)
class _Exit:
    reason: str
    fatal: bool  # a restart cannot help (the model cannot load, the settings are bad)
    uptime_s: float


def failure_reason(log_path: Path, offset: int, returncode: int) -> str:
    """Why a process ended: the last JSON log line with a "reason", else its last line and exit code."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    try:
        with log_path.open("rb") as handle:
            handle.seek(max(offset, handle.seek(0, os.SEEK_END) - _REASON_TAIL_BYTES))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        lines = []
    last_line = ""
    for line in reversed(lines):
        text = line.strip()
        if not text:
            continue
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if isinstance(record, dict):
            if record.get("reason"):
                return str(record["reason"])
            continue
        last_line = last_line or text
    return f"exited with code {returncode}" + (f": {last_line[:500]}" if last_line else "")


class Replica:
    """One model-server process kept alive: ready only after /v2/health/ready answers 200."""

    def __init__(
        self,
        name: str,
        spec: ServerSpec,
        *,
        env: Mapping[str, str],
        log_path: Path,
        options: LocalOptions,
        client: httpx.AsyncClient,
        ports: PortBook,
        on_event: Callable[[Replica], Awaitable[None]],
        fallback: str | None = None,
        gpu: tuple[str, int] | None = None,
        pythons: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.spec = spec
        self.key = spec_key(spec)
        self.fallback = fallback
        self.gpu = gpu
        # interpreters to run the model server with, in order: one that cannot load the model hands over to the next
        self.pythons = list(pythons) or [sys.executable]
        self.execution_provider: str | None = None  # as the server's readiness answer says
        self.provider_fallback: str | None = None
        self.ready = False
        self.restarts = 0
        self.gave_up: str | None = None  # why the replica stopped being restarted
        self.stopping = False
        self.pid: int | None = None
        self.port: int | None = None
        self.detail = "starting"
        self._env = dict(env)
        self._log_path = log_path
        self._options = options
        self._client = client
        self._ports = ports
        self._on_event = on_event
        self._starts = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str | None:
        return f"http://{self._options.host}:{self.port}" if self.port is not None else None

    @property
    def alive(self) -> bool:
        """Supervised now (running, starting or waiting to restart); False once stopped or given up."""
        return self._task is not None and not self._task.done()

    @property
    def crashing(self) -> bool:
        return self.restarts > 0 and not self.ready and self.gave_up is None

    def status(self) -> ReplicaStatus:
        where = f"pid {self.pid}, port {self.port}" if self.pid else ""
        detail = "; ".join(part for part in (where, self.detail) if part)
        return ReplicaStatus(self.name, self.url, self.ready, self.restarts, detail)

    def start(self) -> None:
        """Start supervising (spawn now, restart on crash) in a background task."""
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name=f"replica-{self.name}")

    async def stop(self) -> None:
        """Drain and stop the process (SIGTERM, SIGKILL after drain_timeout_s); safe to call twice."""
        self.stopping = True
        self._stop.set()
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _supervise(self) -> None:
        options = self._options
        backoff = options.restart_backoff_initial_s
        in_a_row = 0
        while not self._stop.is_set():
            ended = await self._run_once()
            if ended is None:
                return
            if ended.fatal and len(self.pythons) > 1:
                self._next_python(ended.reason)
                continue
            if ended.fatal:
                await self._give_up(ended.reason)
                return
            if ended.uptime_s >= options.restart_reset_after_s:
                backoff, in_a_row = options.restart_backoff_initial_s, 0
            in_a_row += 1
            if in_a_row > options.max_restarts:
                await self._give_up(f"crashed {in_a_row} times in a row; last: {ended.reason}")
                return
            self.restarts += 1
            self.detail = f"restarting in {backoff:g}s after: {ended.reason}"
            log.warning("replica_crashed", replica=self.name, reason=ended.reason, restart_in_s=backoff)
            await self._on_event(self)
            try:
                async with asyncio.timeout(backoff):
                    await self._stop.wait()
                return
            except TimeoutError:
                backoff = min(backoff * 2, options.restart_backoff_max_s)

    def _next_python(self, reason: str) -> None:
        """The model cannot load on this interpreter's ONNX Runtime (OpenVINO's 1.24 refuses ONNX IR 14):
        start again at once on the next one, and say why in the replica's fallback."""
        failed = self.pythons.pop(0)
        why = f"{failed} could not load the model ({reason}); serving with {self.pythons[0]}"
        self.fallback = "; ".join(part for part in (self.fallback, why) if part)
        self._starts = 0  # the next interpreter's first start decides again whether a failure is fatal
        log.warning("model_server_interpreter_fallback", replica=self.name, reason=why)

    async def _give_up(self, reason: str) -> None:
        self.gave_up = self.detail = reason
        log.error("replica_given_up", replica=self.name, reason=reason)
        await self._on_event(self)

    def _command(self, port: int) -> list[str]:
        spec = self.spec
        return [
            self.pythons[0], "-m", "gallery_deployer.modelserver",
            "--model", spec.model, "--version", str(spec.version), "--variant", spec.variant,
            "--artifact", spec.artifact_uri, "--sha256", spec.artifact_sha256, "--port", str(port),
            "--max-batch-size", str(spec.max_batch_size), "--max-queue-delay-ms", str(spec.max_queue_delay_ms),
            "--intra-op-threads", str(spec.intra_op_threads),
        ]  # fmt: skip

    async def _spawn(self, port: int) -> tuple[asyncio.subprocess.Process, int]:
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._starts += 1
        with self._log_path.open("ab") as out:
            offset = out.tell()
            header = {"event": "replica_start", "replica": self.name, "start": self._starts, "port": port}
            out.write(json.dumps(header).encode() + b"\n")
            out.flush()
            process = await asyncio.create_subprocess_exec(
                *self._command(port),
                env=self._env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=die_with_parent(),
            )
        return process, offset

    async def _run_once(self) -> _Exit | None:
        """Run one process to its end; None when it ended because stop() asked."""
        options = self._options
        port = self._ports.take()
        try:
            process, offset = await self._spawn(port)
        except BaseException:
            self._ports.release(port)
            raise
        self.pid, self.port = process.pid, port
        self.detail = "starting"
        started = time.monotonic()
        exited = asyncio.ensure_future(process.wait())
        stop = asyncio.ensure_future(self._stop.wait())
        failing_since: float | None = None
        ever_ready = False
        try:
            await self._on_event(self)
            while True:
                await asyncio.wait({exited, stop}, timeout=options.health_interval_s, return_when="FIRST_COMPLETED")
                if stop.done():
                    await self._drain(process, exited)
                    return None
                if exited.done():
                    code = process.returncode if process.returncode is not None else -1
                    fatal = code in (EXIT_CANNOT_LOAD, EXIT_BAD_SETTINGS) and self._starts == 1 and not ever_ready
                    return await self._ended(failure_reason(self._log_path, offset, code), fatal, started)
                now = time.monotonic()
                if answer := await self._probe():
                    failing_since = None
                    if not self.ready:
                        self._read_provider(answer)
                        self.ready = ever_ready = True
                        self.detail = ""
                        log.info("replica_ready", replica=self.name, url=self.url, seconds=round(now - started, 3))
                        await self._on_event(self)
                    continue
                if self.ready:
                    self.ready = False
                    self.detail = "not answering /v2/health/ready"
                    await self._on_event(self)
                if ever_ready:
                    failing_since = failing_since or now
                    if now - failing_since >= options.unhealthy_after_s:
                        reason = f"stopped answering /v2/health/ready for {now - failing_since:.1f}s"
                        await self._kill(process, exited)
                        return await self._ended(reason, False, started)
                elif now - started >= options.ready_timeout_s:
                    await self._kill(process, exited)
                    return await self._ended(f"not ready after {options.ready_timeout_s:g}s", False, started)
        finally:
            stop.cancel()
            if process.returncode is None:  # cancelled mid-run: never leave the process behind
                await self._kill(process, exited)
            self._ports.release(port)
            self.pid = self.port = None

    async def _ended(self, reason: str, fatal: bool, started: float) -> _Exit:
        was_ready, self.ready = self.ready, False
        if was_ready:
            await self._on_event(self)
        return _Exit(reason, fatal, time.monotonic() - started)

    async def _probe(self) -> httpx.Response | None:
        """The readiness answer when it is 200, else None."""
        try:
            response = await self._client.get(f"{self.url}/v2/health/ready")
        except httpx.HTTPError:
            return None
        return response if response.status_code == 200 else None

    def _read_provider(self, answer: httpx.Response) -> None:
        """The execution provider (and why not the preferred one) from the server's readiness answer."""
        try:
            body = answer.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            self.execution_provider = body.get("execution_provider") or None
            self.provider_fallback = body.get("provider_fallback") or None

    async def _drain(self, process: asyncio.subprocess.Process, exited: asyncio.Future[int]) -> None:
        was_ready, self.ready = self.ready, False
        self.detail = "draining"
        await self._on_event(self)  # the gateway drops this endpoint before the server stops taking requests
        if was_ready and self._options.drain_grace_s and not exited.done():
            await asyncio.wait({exited}, timeout=self._options.drain_grace_s)
        if not exited.done():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            await asyncio.wait({exited}, timeout=self._options.drain_timeout_s)
        if not exited.done():
            log.warning("replica_drain_timeout", replica=self.name, seconds=self._options.drain_timeout_s)
            await self._kill(process, exited)
        self.detail = "stopped"

    @staticmethod
    async def _kill(process: asyncio.subprocess.Process, exited: asyncio.Future[int]) -> None:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await asyncio.shield(exited)
