"""A writer SIGKILLed mid-write leaves its temp file beside the artifact; the next write into that folder
removes it, and leaves alone the temp files of writers still running or running on another host."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from gallery_common.artifacts.base import write_atomically
from gallery_common.artifacts.partial_writes import TEMP_PREFIX, sweep_dead_writers, temp_name

SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from gallery_common.artifacts.base import write_atomically

    def chunks():
        yield b"first half of the model "
        time.sleep(3600)  # killed here, mid-write
        yield b"second half"

    write_atomically(Path(sys.argv[1]), chunks())
    """
)


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(f"{TEMP_PREFIX}*"))


def killed_mid_write(dest: Path) -> str:
    """Run a writer until its temp file is there, SIGKILL it; the temp file's name."""
    writer = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(dest)])
    try:
        deadline = time.monotonic() + 60
        while not (left := temps(dest.parent)):
            assert time.monotonic() < deadline, "the writer never started its temp file"
            assert writer.poll() is None, "the writer ended before it was killed"
            time.sleep(0.01)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    return left[0]


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path: Path) -> None:
    dest = tmp_path / "optimized" / "model.onnx"
    left = killed_mid_write(dest)
    assert temps(dest.parent) == [left] and not dest.exists()  # what a SIGKILL leaves, before this fix or not

    write_atomically(dest, [b"the whole model"])

    assert dest.read_bytes() == b"the whole model"
    assert temps(dest.parent) == []


def test_temp_files_of_running_writers_and_of_other_hosts_are_kept(tmp_path: Path) -> None:
    mine = tmp_path / temp_name()  # this process's: a write in progress
    other_host = tmp_path / f"{TEMP_PREFIX}00000000-1-abcd"
    unknown = tmp_path / f"{TEMP_PREFIX}abandoned"  # a name no writer of ours gives: not ours to judge
    for path in (mine, other_host, unknown):
        path.write_bytes(b"partial")
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    try:
        running = tmp_path / temp_name().replace(f"-{os.getpid()}-", f"-{parent.pid}-")
        running.write_bytes(b"partial")
        assert sweep_dead_writers(tmp_path) == []
    finally:
        parent.kill()
        parent.wait()
    assert sweep_dead_writers(tmp_path) == [running.name]  # its writer has ended now
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (mine, other_host, unknown))


def test_a_folder_not_there_yet_has_nothing_to_sweep(tmp_path: Path) -> None:
    assert sweep_dead_writers(tmp_path / "new") == []
