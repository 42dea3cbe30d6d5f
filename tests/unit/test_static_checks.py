"""The code type-checks (mypy over the libraries and every service's package) and passes ruff, as
`make lint` checks it: part of `make test`, so a change that breaks either does not land."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TYPED = [
    "libs/common/src",
    "libs/cli/src",
    *sorted(str(path.relative_to(REPO)) for path in (REPO / "services").glob("*/src")),
]


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_every_package_type_checks() -> None:
    assert len(TYPED) == 8, TYPED  # the six services and the two libraries
    done = run(str(BIN / "mypy"), *TYPED)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_finds_nothing_and_the_code_is_formatted() -> None:
    check = run(str(BIN / "ruff"), "check", ".")
    assert check.returncode == 0, check.stdout + check.stderr
    formatted = run(str(BIN / "ruff"), "format", "--check", ".")
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr
