"""DeepSpeed's CPU communication op (`deepspeed_shm_comm`), kept per installation and built once.

DeepSpeed JIT-compiles the op on first use (about 50 s and 3 GB on two cores) into
`TORCH_EXTENSIONS_DIR`, by default a cache every installation on the machine shares: two
installations then rebuild it in turn and wait on each other's build lock. The trainer gives its
ranks a folder inside this installation instead (`extensions_dir`), `make install` builds the op
there (`python -m gallery_trainer.engine.build_ops`), and a rank that still finds it missing builds
it there under this installation's own lock.

torch's build lock (`<op folder>/lock`, a plain file) stays behind when a build is killed, and every
later build then waits on it forever. Every build of ours holds a kernel lock (`flock`) beside it
while it runs, which the kernel drops when the builder dies; a `lock` file that nobody holding the
kernel lock can own is stale, and is removed with a log line before the build.

    python -m gallery_trainer.engine.build_ops [--dir DIR]
"""

from __future__ import annotations

import argparse
import fcntl
import importlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

COMM_OP = "deepspeed_shm_comm"
TORCH_LOCK = "lock"  # torch.utils.file_baton.FileBaton's file in the op's build folder


def extensions_dir() -> Path:
    """Where this installation's ranks keep compiled ops: TORCH_EXTENSIONS_DIR when set, else a
    folder under the Python environment's prefix (a venv, or the image's interpreter)."""
    explicit = os.environ.get("TORCH_EXTENSIONS_DIR")
    if explicit:
        return Path(explicit)
    return Path(sys.prefix) / "var" / "gallery-trainer" / "torch_extensions"


def needs_comm_op(world_size: int, device_type: str) -> bool:
    """Whether a job's ranks use DeepSpeed's shared-memory op: only several ranks on the CPU
    (with one rank there is nothing to reduce; GPUs reduce with NCCL)."""
    return world_size > 1 and device_type == "cpu"


@contextmanager
def build_lock(op_dir: Path) -> Iterator[None]:
    """Hold this installation's kernel lock for building the op in `op_dir` (waits for another build)."""
    op_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(op_dir.parent / f"{op_dir.name}.building", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def clear_stale_lock(op_dir: Path) -> bool:
    """Remove torch's build lock left in `op_dir` by a killed build; call it holding `build_lock`.

    Every builder of ours holds that lock while torch's lock file exists, so a lock file found then
    belongs to no live build. Returns whether one was removed.
    """
    lock = op_dir / TORCH_LOCK
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if _compiling_in(op_dir):
        return False  # a build that did not go through build_lock (DeepSpeed run by hand) is still running
    lock.unlink(missing_ok=True)
    print(
        f"removed a stale build lock {lock} ({age:.0f} s old; the build that left it is gone)",
        file=sys.stderr,
        flush=True,
    )
    return True


def _compiling_in(op_dir: Path) -> bool:
    """Whether a live process works in `op_dir` (torch runs ninja and the compiler there)."""
    import psutil

    target = str(op_dir.resolve())
    for proc in psutil.process_iter():
        try:
            if proc.cwd() == target:
                return True
        except psutil.Error:
            continue
    return False


def _comm_op_builder() -> Any:
    """DeepSpeed's builder of the op for this machine's accelerator, or None where it has none."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return None
    return builder


def load_comm_op() -> ModuleType | None:
    """Load the op (building it into `extensions_dir()` if needed) so DeepSpeed's own load finds it
    loaded; None where this accelerator has no such op."""
    builder = _comm_op_builder()
    if builder is None:
        return None
    root = extensions_dir()
    os.environ["TORCH_EXTENSIONS_DIR"] = str(root)
    with build_lock(root / COMM_OP):
        clear_stale_lock(root / COMM_OP)
        module: ModuleType = builder.load(verbose=False)
    return module


@contextmanager
def without_comm_op() -> Iterator[None]:
    """Keep `deepspeed.init_distributed` from loading (and on a new installation, compiling) the
    op for a job that never uses it: DeepSpeed's torch backend asks for it on every init."""
    # `deepspeed.comm.torch` as an attribute is the torch package that deepspeed.comm imports
    ds_torch: Any = importlib.import_module("deepspeed.comm.torch")
    original = ds_torch.build_shm_op
    ds_torch.build_shm_op = lambda: None
    try:
        yield
    finally:
        ds_torch.build_shm_op = original


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gallery_trainer.engine.build_ops", description=__doc__)
    parser.add_argument("--dir", type=Path, help="build into this folder (default: this installation's)")
    args = parser.parse_args(argv)
    if args.dir is not None:
        os.environ["TORCH_EXTENSIONS_DIR"] = str(args.dir.resolve())
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        print(
            f"not building DeepSpeed's {COMM_OP} op: no C++ compiler ({compiler}) here; a DeepSpeed job with "
            "several ranks on the CPU will build it on first use where one is installed",
        )
        return 0
    started = time.perf_counter()
    try:
        module = load_comm_op()
    except ImportError as exc:
        print(f"not building DeepSpeed's {COMM_OP} op: DeepSpeed cannot be imported ({exc})")
        return 0
    except Exception as exc:  # the compiler's or DeepSpeed's reason, whatever its type
        print(f"could not build DeepSpeed's {COMM_OP} op into {extensions_dir()}: {type(exc).__name__}: {exc}")
        return 1
    if module is None:
        print(f"DeepSpeed has no {COMM_OP} op for this accelerator; nothing to build")
        return 0
    print(f"DeepSpeed's {COMM_OP} op is ready in {extensions_dir()} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
