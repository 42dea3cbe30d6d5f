"""`make install` pins every package of the test venv to requirements/lock/main.txt (pip constraints), so a
new machine runs the tests on the versions they last passed with, whatever was released since; a venv that
drifted from the lock says which packages did."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCKS = REPO / "requirements" / "lock"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"{lock.name}: {line!r} is not NAME==VERSION"
            found[canonical(name)] = version
    return found


def test_the_test_venv_has_the_locked_versions() -> None:
    pinned = pins(LOCKS / "main.txt")
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    assert len(pinned) > 100 and "torch" in pinned and "fastapi" in pinned
    drifted = {
        name: f"{installed.get(name, 'not installed')} (lock: {want})"
        for name, want in pinned.items()
        if installed.get(name) != want
    }
    assert drifted == {}, f"the venv differs from requirements/lock/main.txt (`make lock` after a change): {drifted}"


def test_every_lock_pins_exact_versions_and_no_local_paths() -> None:
    for lock in sorted(LOCKS.glob("*.txt")):
        text = lock.read_text()
        assert " @ " not in text and "file:" not in text, f"{lock.name} names a local path"
        assert pins(lock), f"{lock.name} pins nothing"
