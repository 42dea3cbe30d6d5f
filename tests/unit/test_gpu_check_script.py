"""scripts/gpu_check.sh on a machine without a GPU: valid bash, and a clear refusal before it installs or
starts anything (the check itself needs an NVIDIA GPU; it runs where one is lent)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def run_without_gpu(tmp_path: Path, nvidia_smi: str | None) -> subprocess.CompletedProcess[str]:
    """The script with a PATH of its own: `dirname`, and `nvidia-smi` only when given (a fake's body)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(shutil.which("dirname") or "/usr/bin/dirname", bin_dir / "dirname")
    if nvidia_smi is not None:
        fake = bin_dir / "nvidia-smi"
        fake.write_text(f"#!/bin/bash\n{nvidia_smi}\n")
        fake.chmod(0o755)
    env = {"PATH": str(bin_dir), "GPU_VENV": str(tmp_path / "venv-gpu"), "HOME": str(tmp_path)}
    return subprocess.run(["/bin/bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30, check=False)


def test_the_script_is_valid_bash() -> None:
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert os.access(SCRIPT, os.X_OK)


def test_without_nvidia_smi_it_stops_at_once_and_says_why(tmp_path: Path) -> None:
    done = run_without_gpu(tmp_path, nvidia_smi=None)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "gpu_check: no NVIDIA GPU here (nvidia-smi not found); run it on a machine with a GPU. Nothing was run."
    )
    assert done.stdout == ""
    assert not (tmp_path / "venv-gpu").exists()  # nothing installed


def test_a_driver_that_answers_with_an_error_stops_it_with_that_error(tmp_path: Path) -> None:
    failure = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    done = run_without_gpu(tmp_path, nvidia_smi=f'echo "{failure}"; exit 9')
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"gpu_check: nvidia-smi lists no usable GPU ({failure}); run it on a machine with a GPU. Nothing was run."
    )
    assert not (tmp_path / "venv-gpu").exists()


def test_a_machine_whose_nvidia_smi_lists_no_gpu_is_refused_too(tmp_path: Path) -> None:
    done = run_without_gpu(tmp_path, nvidia_smi="exit 0")
    assert done.returncode == 2
    assert "nvidia-smi lists no usable GPU (no output)" in done.stderr
