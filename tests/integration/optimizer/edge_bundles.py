"""Running an edge bundle the way a device would: its run.py alone, beside numpy and onnxruntime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def run_bundle(
    bundle: Path, rows: np.ndarray, tmp_path: Path, printed: Callable[[list[Any]], list[str]] = list
) -> dict[str, list[Any]]:
    """Unpack `bundle` into a fresh folder and run its run.py in an interpreter that sees only numpy and
    onnxruntime (no site-packages, so none of Model Gallery). What it printed must be `printed` of the
    predictions it wrote (a classifier prints its labels)."""
    folder = tmp_path / "unpacked"
    folder.mkdir()
    with tarfile.open(bundle) as archive:
        archive.extractall(folder, filter="data")
    deps = tmp_path / "deps"
    deps.mkdir()
    for module in ("numpy", "onnxruntime"):
        package = Path(str(__import__(module).__file__)).parent
        (deps / module).symlink_to(package)
        libs = package.parent / f"{module}.libs"
        if libs.exists():
            (deps / libs.name).symlink_to(libs)
    np.save(folder / "rows.npy", rows)
    completed = subprocess.run(
        [sys.executable, "-S", "-s", "run.py", "rows.npy", "--output", "out.json"],
        cwd=folder,
        env={"PYTHONPATH": str(deps), "PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads((folder / "out.json").read_text())
    assert completed.stdout.split() == printed(result["predictions"])
    return result
