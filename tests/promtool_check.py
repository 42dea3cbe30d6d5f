"""`promtool check metrics` for the tests (its own module: a test imports it, never a conftest)."""

from __future__ import annotations

import subprocess
from pathlib import Path


class Promtool:
    """`promtool check metrics` (installed into the venv by `make test`): what it finds wrong with a /metrics page."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary

    def problems(self, exposition: str | bytes) -> str:
        """'' when the page is clean, else promtool's complaints, one per line."""
        data = exposition.encode() if isinstance(exposition, str) else exposition
        done = subprocess.run([str(self.binary), "check", "metrics"], input=data, capture_output=True, timeout=60)
        return "" if done.returncode == 0 else (done.stdout + done.stderr).decode().strip() or f"exit {done.returncode}"
