"""A sandbox to run `gallery up` in: its own GALLERY_HOME and NATS port, and a tiny service package
installed into a temp directory (a module plus a `*.dist-info` with a `modelgallery.services` entry
point) on the CLI's PYTHONPATH, so no real service package is needed."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from gallery_common.netutil import free_port

GALLERY = Path(sys.executable).parent / "gallery"

SERVICE_MODULE = """
from gallery_common.service import ServiceSpec

SERVICE = ServiceSpec(name="{name}", port={port}, app_factory="{module}:create")


def create():
    {body}
"""
# The real app factory with the bus on: /readyz is 200 only once the service reached the stack's NATS.
WORKING_APP = """from gallery_common.app import create_app
    from gallery_common.settings import load_settings

    return create_app(load_settings(), title="echo")"""
BROKEN_APP = 'raise RuntimeError("echo cannot start: no weights")'


@dataclass
class Sandbox:
    """A GALLERY_HOME, a NATS port and an installed fake service, with the env to run `gallery` in."""

    home: Path
    nats_port: int
    service_port: int
    env: dict[str, str]

    def gallery(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        if args[:1] == ("up",):
            # the services installed in the venv are not this test's business
            args = (*args, "--only", "echo")
        return subprocess.run(
            [str(GALLERY), *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def stack(self) -> dict:
        return json.loads((self.home / "run" / "stack.json").read_text())


def install_service(site: Path, name: str, port: int, body: str) -> None:
    module = f"fake_{name}"
    (site / f"{module}.py").write_text(
        textwrap.dedent(SERVICE_MODULE).format(name=name, port=port, module=module, body=body)
    )
    dist = site / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[modelgallery.services]\n{name} = {module}:SERVICE\n")


def make_sandbox(tmp_path: Path, body: str) -> Sandbox:
    site = tmp_path / "site"
    site.mkdir()
    service_port = free_port()
    install_service(site, "echo", service_port, body)
    nats_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALLERY_")}
    env.update(
        GALLERY_HOME=str(tmp_path / "home"),
        GALLERY_NATS_URL=f"nats://127.0.0.1:{nats_port}",
        PYTHONPATH=os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")])),
        COLUMNS="200",  # rich would otherwise wrap the tables at 80 columns
    )
    return Sandbox(tmp_path / "home", nats_port, service_port, env)


def pids_gone(pids: list[int], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
            return True
        time.sleep(0.05)
    return False


async def gallery_async(
    nats_url: str, *args: str, home: Path | None = None, extra_env: dict[str, str] | None = None
) -> tuple[int, str]:
    """`gallery ...` (exit code, stdout and stderr together) run while the test's consumers keep running on its
    event loop; `home` its GALLERY_HOME (where a secured stack's NATS passwords are), `extra_env` more of its
    environment (a service's URL, a token)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALLERY_")}
    env.update(GALLERY_NATS_URL=nats_url, COLUMNS="200", **({"GALLERY_HOME": str(home)} if home else {}))
    env.update(extra_env or {})
    proc = await asyncio.create_subprocess_exec(
        str(GALLERY), *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


def start_foreground(sandbox: Sandbox) -> subprocess.Popen[str]:
    """`gallery up` without --detach, returned once `gallery status` calls the whole stack healthy (nats-server
    alone is healthy, and recorded, before the service has even started)."""
    proc = subprocess.Popen(
        [str(GALLERY), "up", "--only", "echo"],
        env=sandbox.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30

    def healthy() -> bool:
        status = sandbox.gallery("status", "--json")
        return status.returncode == 0 and "echo" in {row["name"] for row in json.loads(status.stdout)}

    while not healthy():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"foreground up never became healthy: {proc.communicate()[0]}")
        time.sleep(0.2)
    return proc
