"""DeepSpeed's op kept per installation: the folder the ranks get, and torch's build lock left by a killed build."""

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from torch.utils.file_baton import FileBaton
from waiting import wait_for

from gallery_trainer.engine import build_ops
from gallery_trainer.launcher import rank_environment
from gallery_trainer.spec import parse_spec

HOLD_TORCH_LOCK = """
import sys, time
from torch.utils.file_baton import FileBaton
assert FileBaton(sys.argv[1]).try_acquire()
print("holding", flush=True)
time.sleep(600)
"""


def killed_build(op_dir: Path) -> Path:
    """A real builder holding torch's lock, SIGKILLed as a killed build would be: its lock file stays."""
    op_dir.mkdir(parents=True)
    lock = op_dir / build_ops.TORCH_LOCK
    proc = subprocess.Popen([sys.executable, "-c", HOLD_TORCH_LOCK, str(lock)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"holding\n"
    proc.kill()
    proc.wait()
    return lock


def test_a_lock_left_by_a_killed_build_is_cleared_with_a_log_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    op_dir = tmp_path / build_ops.COMM_OP
    lock = killed_build(op_dir)
    assert lock.exists() and not FileBaton(str(lock)).try_acquire()  # torch's next build would wait forever

    with build_ops.build_lock(op_dir):
        assert build_ops.clear_stale_lock(op_dir)

    assert "removed a stale build lock" in capsys.readouterr().err
    baton = FileBaton(str(lock))
    assert baton.try_acquire()  # the next build goes ahead
    baton.release()
    assert not build_ops.clear_stale_lock(op_dir)  # nothing left to clear


def test_the_lock_of_a_build_still_compiling_is_kept(tmp_path: Path) -> None:
    op_dir = tmp_path / build_ops.COMM_OP
    op_dir.mkdir()
    lock = op_dir / build_ops.TORCH_LOCK
    lock.touch()  # as torch's FileBaton makes it
    # torch runs ninja and the compiler in the op's folder: a live one there means the build goes on
    compiler = subprocess.Popen(["sleep", "60"], cwd=op_dir)
    try:
        wait_for("the compiler running", lambda: build_ops._compiling_in(op_dir), timeout=10)
        assert not build_ops.clear_stale_lock(op_dir)
        assert lock.exists()
    finally:
        compiler.kill()
        compiler.wait()


HOLD_BUILD_LOCK = """
import sys, time
from pathlib import Path
from gallery_trainer.engine.build_ops import build_lock
with build_lock(Path(sys.argv[1])):
    print("building", flush=True)
    time.sleep(600)
"""


def test_a_build_waits_for_this_installations_builder_and_not_for_a_dead_one(tmp_path: Path) -> None:
    op_dir = tmp_path / build_ops.COMM_OP
    builder = subprocess.Popen([sys.executable, "-c", HOLD_BUILD_LOCK, str(op_dir)], stdout=subprocess.PIPE)
    assert builder.stdout is not None and builder.stdout.readline() == b"building\n"
    entered: list[float] = []
    waiter = threading.Thread(target=lambda: _enter(op_dir, entered))
    waiter.start()
    waiter.join(timeout=0.5)  # time for the waiter to get in, if the lock did not hold it
    assert entered == [] and waiter.is_alive()
    builder.kill()  # the kernel drops its lock with it
    builder.wait()
    waiter.join(timeout=10)
    assert len(entered) == 1


def _enter(op_dir: Path, entered: list[float]) -> None:
    with build_ops.build_lock(op_dir):
        entered.append(time.monotonic())


def test_the_ranks_get_this_installations_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    spec = parse_spec({"name": "d", "data": {"source": "builtin", "name": "digits"}, "engine": {"ranks": 2}})
    ours = str(Path(sys.prefix) / "var" / "gallery-trainer" / "torch_extensions")
    assert rank_environment(spec, 29500, 1)["TORCH_EXTENSIONS_DIR"] == ours
    assert rank_environment(spec, 29500)["TORCH_EXTENSIONS_DIR"] == ours  # a launcher's, for its ranks
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert rank_environment(spec, 29500, 0)["TORCH_EXTENSIONS_DIR"] == str(tmp_path)


def test_only_several_ranks_on_the_cpu_need_the_op() -> None:
    assert build_ops.needs_comm_op(2, "cpu")
    assert not build_ops.needs_comm_op(1, "cpu")
    assert not build_ops.needs_comm_op(4, "cuda")
