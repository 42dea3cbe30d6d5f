"""The embedded stack for end-to-end tests: each service its own process, as `gallery up` runs it,
but on free ports so a stack the developer runs beside the tests is left alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gallery_common.bus import EventBus
from gallery_common.nats_auth import NatsCredentials, password_path
from gallery_common.netutil import free_port


@dataclass
class ServiceProcess:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class LifecycleStack:
    home: Path
    nats_url: str
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GALLERY_")}
        env.update(GALLERY_HOME=str(self.home), GALLERY_NATS_URL=self.nats_url, **extra)
        for name, service in self.services.items():
            if name == service.name:  # the first process of each service
                env[f"GALLERY_{name.upper()}_URL"] = service.url
        return env

    def bus(self, user: str = "cli") -> EventBus:
        """A bus connection as NATS user `user` when the stack's server has users (see `gallery_common.nats_auth`)."""
        path = password_path(self.home, user)
        credentials = NatsCredentials(user, path.read_text().strip()) if path.exists() else None
        return EventBus(self.nats_url, f"test-{user}", credentials=credentials)

    def start(self, name: str, timeout: float = 60.0, *, replica: str = "", **settings: str) -> ServiceProcess:
        """Start service `name`; a `replica` suffix starts one more process of it, kept as `<name><replica>`."""
        return self._ready(self._launch(name, replica, settings), timeout)

    def start_together(self, *starts: tuple[str, str, dict[str, str]], timeout: float = 60.0) -> list[ServiceProcess]:
        """Start several processes at once, each (name, replica, settings) as `start` takes them, and wait
        until all are ready: their start-ups overlap instead of adding up."""
        launched = [self._launch(name, replica, settings) for name, replica, settings in starts]
        return [self._ready(service, timeout) for service in launched]

    def _launch(self, name: str, replica: str, settings: dict[str, str]) -> ServiceProcess:
        port = free_port()
        log = self.home / "logs" / f"{name}{replica}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = self.env(GALLERY_SERVICE_NAME=name, GALLERY_PORT=str(port), **settings)
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "gallery_common.serve", name], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        service = ServiceProcess(name, f"http://127.0.0.1:{port}", process, log)
        self.services[name + replica] = service
        return service

    @staticmethod
    def _ready(service: ServiceProcess, timeout: float) -> ServiceProcess:
        name, process, log = service.name, service.process, service.log
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{service.url}/readyz", timeout=1).status_code == 200:
                    return service
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{name} was not ready within {timeout}s: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        for service in self.services.values():
            service.process.terminate()
        for service in self.services.values():
            try:
                service.process.wait(20)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()
