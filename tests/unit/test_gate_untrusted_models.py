"""The gate's evaluation runs an untrusted model in a child process under a time and a memory limit: a model
that never finishes or allocates gigabytes is a rejection reason, not a frozen or exhausted registry."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
from hostile_artifacts import allocating_model, loop_model
from test_gate_evaluation import FAST, identity_model

from gallery_common.sandbox import Limits
from gallery_common.settings import get_settings
from gallery_registry.gate.evaluation import EvaluationFailed, HeldOutSplit, OnnxModel, evaluate

GiB = 1024**3
ROWS = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
SPLIT = HeldOutSplit(ROWS, np.arange(40) % 3)


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Environment overrides that `get_settings()` sees, undone (and forgotten) after the test."""
    get_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


def test_an_endless_loop_is_stopped_at_the_time_limit_with_that_reason() -> None:
    model = OnnxModel(loop_model(4, 3))  # a Loop with 2**40 iterations: days of work
    started = time.perf_counter()
    with pytest.raises(EvaluationFailed) as failed:
        evaluate(model, SPLIT, "classification", None, FAST, Limits(timeout_s=1.5, memory_bytes=2 * GiB))
    elapsed = time.perf_counter() - started
    assert str(failed.value) == "evaluation exceeded its 1.5 s time limit"
    assert 1.5 <= elapsed < 5.0


def test_a_model_that_allocates_gigabytes_is_stopped_at_the_memory_limit() -> None:
    model = OnnxModel(allocating_model(4, 3))  # a 4 GiB tensor of ones on every run
    with pytest.raises(EvaluationFailed) as failed:
        evaluate(model, SPLIT, "classification", None, FAST, Limits(timeout_s=60, memory_bytes=GiB))
    assert str(failed.value) == "evaluation exceeded its 1024 MiB memory limit"


def test_the_same_model_with_a_short_loop_evaluates_under_the_same_limits() -> None:
    limits = Limits(timeout_s=30, memory_bytes=GiB)
    with pytest.raises(EvaluationFailed, match="time limit"):
        evaluate(OnnxModel(loop_model(4, 3)), SPLIT, "classification", None, FAST, Limits(0.5, GiB))
    # the child that was killed took nothing with it: the next evaluation runs as usual
    report = evaluate(OnnxModel(loop_model(4, 3, trip_count=3)), SPLIT, "classification", None, FAST, limits)
    assert report["n_test"] == 40 and 0.0 <= report["accuracy"] <= 1.0
    logits = np.eye(3, dtype=np.float32)[np.arange(40) % 3] * 5
    report = evaluate(
        OnnxModel(identity_model(3)), HeldOutSplit(logits, np.arange(40) % 3), "classification", None, FAST, limits
    )
    assert report["accuracy"] == 1.0


def test_the_limits_default_to_the_settings(settings_env: pytest.MonkeyPatch) -> None:
    settings_env.setenv("GALLERY_EVALUATION_TIMEOUT_S", "1")
    settings_env.setenv("GALLERY_EVALUATION_MEMORY_BYTES", str(2 * GiB))
    get_settings.cache_clear()
    with pytest.raises(EvaluationFailed, match=r"^evaluation exceeded its 1 s time limit$"):
        evaluate(OnnxModel(loop_model(4, 3)), SPLIT, "classification", None, FAST)


def test_a_reason_found_in_the_child_comes_back_as_the_reason() -> None:
    wide = HeldOutSplit(np.ones((3, 5), np.float32), np.zeros(3, np.int64))
    with pytest.raises(EvaluationFailed, match=r"^the model takes 4 features but the test split has 5$"):
        evaluate(OnnxModel(loop_model(4, 3, trip_count=1)), wide, "classification", None, FAST, Limits(30, GiB))
