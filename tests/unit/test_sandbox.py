"""The sandbox's own promises, with standard-library functions as the work: answers come back as bytes,
an exception or a crash in the child is a reason, and the child runs under the limits it was given."""

from __future__ import annotations

import os
import time

import pytest

from gallery_common.sandbox import LimitExceeded, Limits, SandboxFailed, run_limited
from gallery_common.settings import GallerySettings

LIMITS = Limits(timeout_s=30, memory_bytes=2 * 1024**3)


def test_the_answer_comes_back_as_bytes() -> None:
    assert run_limited(bytes, (b"answer",), limits=LIMITS, what="echo") == b"answer"


def test_an_exception_in_the_child_is_its_first_line() -> None:
    with pytest.raises(SandboxFailed, match=r"^ValueError: invalid literal for int\(\) with base 10: 'x'$"):
        run_limited(int, ("x",), limits=LIMITS, what="parsing")


def test_a_child_that_crashes_is_named_with_its_signal() -> None:
    with pytest.raises(SandboxFailed, match=r"^parsing crashed \(SIGABRT\)$"):
        run_limited(os.abort, (), limits=LIMITS, what="parsing")


def test_a_child_that_runs_too_long_is_killed_at_the_wall_time_limit() -> None:
    started = time.perf_counter()
    with pytest.raises(LimitExceeded, match=r"^sleeping exceeded its 0\.5 s time limit$") as stopped:
        run_limited(time.sleep, (60,), limits=Limits(0.5, 2 * 1024**3), what="sleeping")
    assert stopped.value.kind == "time" and time.perf_counter() - started < 3


def test_a_child_that_allocates_past_its_memory_limit_is_stopped_with_that_reason() -> None:
    with pytest.raises(LimitExceeded, match=r"^allocating exceeded its 1024 MiB memory limit$") as stopped:
        run_limited(bytearray, (3 * 1024**3,), limits=Limits(30, 1024**3), what="allocating")
    assert stopped.value.kind == "memory"
    assert run_limited(bytearray, (1024**2,), limits=Limits(30, 1024**3), what="allocating") == bytes(1024**2)


def test_the_limits_come_from_the_settings_with_sane_defaults() -> None:
    defaults = Limits.from_settings(GallerySettings())
    assert defaults == Limits(timeout_s=300.0, memory_bytes=4 * 1024**3)
    assert Limits.from_settings(GallerySettings(evaluation_timeout_s=2, evaluation_memory_bytes=2**30)) == Limits(
        2, 2**30
    )
