"""Running untrusted work (an ONNX model someone uploaded) in a child process with a time and memory limit.

An ONNX `Loop` with a trip count of 2**40, or a node that allocates 16 GiB, would freeze or exhaust the
service that runs it in-process. `run_limited` runs a function in a fresh child with RLIMIT_AS (memory:
the address space the work may add to what the child maps at its start), RLIMIT_CPU (a backstop that
stops the child even if this service dies first) and no core files, waits at most `timeout_s` wall
time, and kills it past that. The reason a run was stopped is a `LimitExceeded`
whose message a user can read ("evaluation exceeded its 60 s time limit").

Children fork from a forkserver that has already imported numpy and ONNX Runtime, so one run costs a few
milliseconds rather than the ~0.5 s of a fresh interpreter. The child's answer comes back as bytes the
caller decodes (JSON, `.npy`); nothing from the child is unpickled, as a model that broke the runtime
could otherwise run code here.

As with any use of multiprocessing's forkserver, a script that starts this work must guard its entry
point with `if __name__ == "__main__":` (the forkserver imports the main module); services start as
modules that do.

Blocking (it waits for the child): call from a worker thread.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import resource
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from gallery_common.settings import GallerySettings

__all__ = ["LimitExceeded", "Limits", "SandboxFailed", "is_allocation_failure", "run_limited"]

# imported once in the forkserver, so each child starts with them loaded
_PRELOAD = ("numpy", "onnxruntime", "onnx")
_CPU_SLACK_S = 5
_KILL_GRACE_S = 5.0
_OK, _FAILED, _OUT_OF_MEMORY = b"\x00", b"\x01", b"\x02"
# what ONNX Runtime and the C++ runtime say when an allocation fails under RLIMIT_AS
_ALLOCATION_FAILURES = ("failed to allocate memory", "bad_alloc", "bad allocation", "out of memory")

_context_lock = threading.Lock()
_preloaded: set[str] = set()


@dataclass(frozen=True)
class Limits:
    """How long (wall seconds) and how much address space one sandboxed run may take."""

    timeout_s: float
    memory_bytes: int

    @classmethod
    def from_settings(cls, settings: GallerySettings | None = None) -> Limits:
        """GALLERY_EVALUATION_TIMEOUT_S and GALLERY_EVALUATION_MEMORY_BYTES (from the environment by default)."""
        if settings is None:
            from gallery_common.settings import get_settings

            settings = get_settings()
        return cls(timeout_s=settings.evaluation_timeout_s, memory_bytes=settings.evaluation_memory_bytes)

    def describe_time(self) -> str:
        return f"{self.timeout_s:g} s"

    def describe_memory(self) -> str:
        return f"{self.memory_bytes / 1024**2:.0f} MiB"


class LimitExceeded(Exception):
    """The run passed its time or memory limit and was stopped; the message is the reason."""

    def __init__(self, message: str, kind: Literal["time", "memory"]) -> None:
        super().__init__(message)
        self.kind = kind


class SandboxFailed(Exception):
    """The function raised in the child, or the child died; the message says what happened."""


def is_allocation_failure(message: str) -> bool:
    """Whether an error message is a failed allocation (what RLIMIT_AS turns a greedy model into)."""
    text = message.lower()
    return any(marker in text for marker in _ALLOCATION_FAILURES)


def run_limited(
    target: Callable[..., bytes],
    args: Sequence[Any],
    *,
    limits: Limits,
    what: str,
    preload: Sequence[str] = (),
) -> bytes:
    """`target(*args)` in a child process under `limits`; its bytes, or LimitExceeded / SandboxFailed.

    `target` must be a module-level function (it is imported by name in the child) and `args` picklable.
    `what` names the work in messages ("evaluation" gives "evaluation exceeded its 60 s time limit").
    `preload` names modules worth importing once in the forkserver (the target's own module).
    """
    context = _context(preload)
    receiver, sender = context.Pipe(duplex=False)
    cpu_s = math.ceil(limits.timeout_s) + _CPU_SLACK_S
    child = context.Process(
        target=_child_main,
        args=(sender, target, tuple(args), limits.memory_bytes, cpu_s),
        name=f"sandbox: {what}",
        daemon=True,
    )
    child.start()
    sender.close()
    try:
        answer = _receive(receiver, child, limits, what)
    finally:
        receiver.close()
        if child.is_alive():
            child.kill()
        child.join(_KILL_GRACE_S)
        with contextlib.suppress(ValueError):  # still running after SIGKILL: leave it to the OS to reap
            child.close()
    return answer


def _context(preload: Sequence[str]) -> Any:
    context = multiprocessing.get_context("forkserver")
    # each child runs the main module again (multiprocessing's rule); with its imports already in the
    # forkserver that costs little (a service's main module, `python -m gallery_common.serve`, has a name)
    main_spec = getattr(sys.modules["__main__"], "__spec__", None)
    main_name = getattr(main_spec, "name", None)
    if main_name and main_name.rpartition(".")[2] == "__main__":
        main_name = None  # a package's __main__ is never run again in children, and importing it may start it
    with _context_lock:
        wanted = set(_PRELOAD) | set(preload) | ({main_name} if main_name else set())
        if not wanted <= _preloaded:
            # only takes effect when the forkserver starts; later additions are imported by each child
            _preloaded.update(wanted)
            context.set_forkserver_preload(sorted(_preloaded))
    return context


def _receive(receiver: Connection, child: Any, limits: Limits, what: str) -> bytes:
    if not receiver.poll(limits.timeout_s):
        child.kill()
        raise LimitExceeded(f"{what} exceeded its {limits.describe_time()} time limit", "time")
    try:
        status = receiver.recv_bytes(1)
        if status == _OUT_OF_MEMORY:
            raise LimitExceeded(f"{what} exceeded its {limits.describe_memory()} memory limit", "memory")
        # the child cannot hold more than its memory limit, so no honest answer is larger
        body = receiver.recv_bytes(limits.memory_bytes)
    except (EOFError, OSError):
        child.join(_KILL_GRACE_S)
        raise _death(child.exitcode, limits, what) from None
    if status == _OK:
        return body
    raise SandboxFailed(body.decode("utf-8", "replace"))


def _death(exitcode: int | None, limits: Limits, what: str) -> Exception:
    """Why a child that sent no answer ended."""
    if exitcode is None or exitcode >= 0:
        return SandboxFailed(f"{what} ended (exit status {exitcode}) without an answer")
    signum = -exitcode
    if signum == signal.SIGXCPU:
        return LimitExceeded(f"{what} exceeded its {limits.describe_time()} time limit (CPU time)", "time")
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    if signum == signal.SIGKILL:
        # not ours (we kill only past the wall time, and say so): the CPU hard limit or the kernel's OOM killer
        return SandboxFailed(
            f"{what} was killed (SIGKILL): it passed its CPU time limit or the machine ran out of memory"
        )
    return SandboxFailed(f"{what} crashed ({name})")


def _child_main(sender: Connection, target: Callable[..., bytes], args: tuple[Any, ...], memory: int, cpu: int) -> None:
    _lower(resource.RLIMIT_CORE, 0, 0)
    _lower(resource.RLIMIT_CPU, cpu, cpu + _CPU_SLACK_S)
    # The limit is what the work may add to what the child already maps: the forkserver's imports differ
    # with what the service preloaded (torch alone maps gigabytes), and the limit must not depend on them.
    allowed = _mapped_bytes() + memory
    _lower(resource.RLIMIT_AS, allowed, allowed)
    try:
        result = target(*args)
    except MemoryError:
        _send(sender, _OUT_OF_MEMORY)
    except BaseException as exc:
        text = str(exc).strip()
        if is_allocation_failure(text):
            _send(sender, _OUT_OF_MEMORY)
        else:
            first = text.splitlines()[0] if text else ""
            detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
            # the service logs this line; the full trace stays on the child's stderr
            traceback.print_exc()
            _send(sender, _FAILED, detail.encode("utf-8", "replace"))
    else:
        _send(sender, _OK, result)
    sender.close()


def _mapped_bytes() -> int:
    """The address space this process maps now (Linux's /proc/self/statm; 0 where there is none)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def _lower(kind: int, soft: int, hard: int) -> None:
    """Set a limit, never above one the service itself already runs under (raising it would fail)."""
    _, current_hard = resource.getrlimit(kind)
    if current_hard != resource.RLIM_INFINITY:
        hard = min(hard, current_hard)
        soft = min(soft, hard)
    resource.setrlimit(kind, (soft, hard))


def _send(sender: Connection, status: bytes, body: bytes = b"") -> None:
    # status and body go separately, so a large answer is not copied to prefix it
    with contextlib.suppress(OSError, MemoryError):
        sender.send_bytes(status)
        if status != _OUT_OF_MEMORY:
            sender.send_bytes(body)
