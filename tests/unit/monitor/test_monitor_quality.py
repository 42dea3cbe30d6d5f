"""Online quality from `model.outcome` (feedback joined to answers): kept once per event, summed per version
and time bucket beside the gate's figures, judged against quality SLOs into one `model.degraded` per episode,
and kept out of the timeline."""

from __future__ import annotations

import asyncio
import itertools
import math
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from monitor_core import SLO, sqlite_monitor
from sqlalchemy.exc import OperationalError

from gallery_common.db import make_engine
from gallery_common.errors import InvalidRequest
from gallery_common.events import ModelDegraded, ModelOptimized, ModelOutcome, ModelValidated, VariantResult, make_event
from gallery_monitor.app import timeline_events
from gallery_monitor.core import Monitor
from gallery_monitor.evaluator import evaluate
from gallery_monitor.migrations import upgrade
from gallery_monitor.quality import QualityStore, Tally, bucket_minutes, judge_quality
from gallery_monitor.quality_writer import OutcomeWriter
from gallery_monitor.records import SloUpdate
from gallery_monitor.references import ReferenceUnavailable
from gallery_monitor.timeline import TimelineStore

NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def no_reference(model: str, version: int) -> Any:
    raise ReferenceUnavailable("not needed here")


@pytest.fixture
def monitor(tmp_path: Path) -> Monitor:
    return sqlite_monitor(tmp_path / "monitor.db", no_reference, Clock())


def labelled(
    version: str, request: str, at: float, correct: list[bool], model: str = "iris", variant: str = "fp32"
) -> Any:
    outcome = ModelOutcome(
        model=model,
        version=version,
        variant=variant,
        request_id=request,
        caller="app",
        given_by="labeller",
        answered_at=datetime.fromtimestamp(at, UTC),
        rows=len(correct),
        kind="label",
        label=[1] * len(correct),
        correct=correct,
        correct_rows=sum(correct),
    )
    return make_event(outcome, "gateway", event_id=f"outcome.{request}")


def valued(version: str, request: str, at: float, errors: list[float], model: str = "house") -> Any:
    outcome = ModelOutcome(
        model=model,
        version=version,
        request_id=request,
        caller="app",
        given_by="labeller",
        answered_at=datetime.fromtimestamp(at, UTC),
        rows=len(errors),
        kind="value",
        value=[[0.0]] * len(errors),
        squared_error=errors,
    )
    return make_event(outcome, "gateway", event_id=f"outcome.{request}")


def rewarded(version: str, request: str, at: float, reward: float) -> Any:
    outcome = ModelOutcome(
        model="iris",
        version=version,
        request_id=request,
        caller="app",
        given_by="app",
        answered_at=datetime.fromtimestamp(at, UTC),
        rows=1,
        kind="reward",
        reward=reward,
    )
    return make_event(outcome, "gateway", event_id=f"outcome.{request}")


def validated(version: int, accuracy: float) -> Any:
    payload = ModelValidated(model="iris", version=version, report={"accuracy": accuracy, "macro_f1": accuracy})
    return make_event(payload, "registry")


def answers(monitor: Monitor, version: str, count: int, right: int, at: float, prefix: str = "r") -> None:
    """`count` one-row answers of `version` at `at` with feedback, the first `right` of them correct."""
    for i in range(count):
        assert monitor.quality.record(labelled(version, f"{prefix}{version}-{i}", at, [i < right]))


def optimized(version: int, fp32: float, int8: float) -> Any:
    """The optimizer's report of a version: FP32 and INT8 measured on the test split, a pruned variant failed."""
    artifact = {"uri": f"s3://models/iris/{version}/model.onnx", "sha256": "0" * 64}
    payload = ModelOptimized(
        model="iris",
        version=version,
        recommended="int8",
        recommended_artifact=artifact,
        variants=[
            VariantResult(name="fp32", metrics={"accuracy": fp32, "latency_b1_p50_ms": 0.1}),
            VariantResult(name="int8", metrics={"accuracy": int8}),
            VariantResult(name="pruned", error="not built"),
        ],
    )
    return make_event(payload, "optimizer")


class Published(list[tuple[ModelDegraded, str]]):
    async def __call__(self, payload: ModelDegraded, event_id: str) -> None:
        self.append((payload, event_id))


def test_outcomes_add_up_per_version_once_each_beside_the_gates_accuracy(monitor: Monitor) -> None:
    monitor.timeline.record(validated(1, 0.97))
    event = labelled("1", "a", NOW - 30, [True, True, False, True])
    assert monitor.quality.record(event)
    assert not monitor.quality.record(event)  # redelivered: kept once
    assert monitor.quality.record(labelled("1", "b", NOW - 20, [True]))
    assert monitor.quality.record(labelled("2", "c", NOW - 10, [False, True]))
    assert monitor.quality.record(rewarded("2", "d", NOW - 5, 0.25))
    assert monitor.quality.record(rewarded("2", "e", NOW - 5, -0.75))
    assert monitor.quality.record(labelled("1", "old", NOW - 7200, [False] * 10))  # outside a one-hour window

    view = monitor.online_quality("iris", 3600)
    one, two = view.versions
    assert (one.version, one.labelled_rows, one.accuracy, one.gate_accuracy) == ("1", 5, 0.8, 0.97)
    assert (two.version, two.labelled_rows, two.accuracy, two.gate_accuracy) == ("2", 2, 0.5, None)
    assert (two.outcomes, two.rewarded, two.mean_reward) == (3, 2, -0.25)
    assert one.rmse is None and one.valued_rows == 0
    assert view.bucket_s == 120.0  # an hour in 30 points of two minutes
    assert sum(p.labelled_rows for p in view.series) == 7
    assert [p.version for p in view.series] == ["1", "2"]  # the three answers fall in one bucket

    longer = monitor.online_quality("iris", 3 * 3600)
    assert longer.versions[0].labelled_rows == 15 and longer.versions[0].accuracy == pytest.approx(4 / 15, abs=1e-6)
    assert len({p.t for p in longer.series}) == 2  # the old answer's bucket and the recent one


def test_each_variant_that_answered_has_its_online_accuracy_beside_the_optimizers(monitor: Monitor) -> None:
    """A version served as INT8 with FP32 as its fallback: the fallback's answers count for FP32, and each
    variant's online accuracy stands beside what the optimizer measured of it; the version sums both."""
    monitor.timeline.record(validated(1, 0.96))
    monitor.timeline.record(optimized(1, fp32=0.96, int8=0.95))
    for i in range(10):
        assert monitor.quality.record(labelled("1", f"q{i}", NOW - 60, [i < 8], variant="int8"))
    for i in range(4):
        assert monitor.quality.record(labelled("1", f"f{i}", NOW - 60, [True], variant="fp32"))
    assert monitor.quality.record(labelled("1", "bare", NOW - 60, [False], variant=""))  # a route without names

    (one,) = monitor.online_quality("iris", 3600).versions
    assert (one.outcomes, one.labelled_rows, one.accuracy, one.gate_accuracy) == (15, 15, 0.8, 0.96)
    assert [(v.variant, v.outcomes, v.accuracy, v.test_accuracy) for v in one.variants] == [
        ("int8", 10, 0.8, 0.95),
        ("fp32", 4, 1.0, 0.96),
        ("", 1, 0.0, None),
    ]
    assert all(v.test_rmse is None and v.rmse is None for v in one.variants)


def test_a_regressors_values_give_its_online_rmse(monitor: Monitor) -> None:
    assert monitor.quality.record(valued("3", "v1", NOW - 60, [1.0, 4.0]))
    assert monitor.quality.record(valued("3", "v2", NOW - 30, [16.0]))
    (three,) = monitor.online_quality("house", 600).versions
    assert three.valued_rows == 3 and three.rmse == pytest.approx(math.sqrt(7.0))
    assert three.accuracy is None and three.labelled_rows == 0


def test_the_series_buckets_answers_by_when_they_were_given(monitor: Monitor) -> None:
    for minute in range(10):
        answers(monitor, "1", 10, right=minute, at=NOW - 600 + minute * 60, prefix=f"m{minute}-")
    view = monitor.online_quality("iris", 900)
    assert bucket_minutes(900) == 1 and view.bucket_s == 60.0
    accuracies = [p.accuracy for p in view.series]
    assert accuracies == [pytest.approx(m / 10) for m in range(10)]
    starts = [datetime.fromisoformat(p.t.replace("Z", "+00:00")).timestamp() for p in view.series]
    assert all(b - a == 60 for a, b in itertools.pairwise(starts))

    hour = monitor.online_quality("iris", 3600)  # two-minute buckets: minutes 0-1, 2-3, ... of the window
    assert hour.bucket_s == 120.0
    assert [p.labelled_rows for p in hour.series] == [20] * 5
    assert [p.accuracy for p in hour.series] == [pytest.approx((2 * b + 2 * b + 1) / 20) for b in range(5)]


def test_a_window_longer_than_the_outcomes_kept_is_refused(monitor: Monitor) -> None:
    answers(monitor, "1", 1, 1, NOW)
    with pytest.raises(InvalidRequest, match="longer than the 604800 s of feedback"):
        monitor.online_quality("iris", 8 * 86400)
    with pytest.raises(InvalidRequest, match="quality_window_s 700000 is longer"):
        monitor.slos.update("iris", SloUpdate(quality_window_s=700_000))


def test_quality_slos_are_off_until_set_and_a_null_switches_one_off(monitor: Monitor) -> None:
    assert monitor.slos.get("iris").min_online_accuracy is None
    on = monitor.slos.update("iris", SloUpdate(min_online_accuracy=0.9, max_accuracy_drop=0.05))
    assert (on.min_online_accuracy, on.max_accuracy_drop, on.p99_ms) == (0.9, 0.05, 100)
    off = monitor.slos.update("iris", SloUpdate.model_validate({"min_online_accuracy": None, "p99_ms": None}))
    assert (off.min_online_accuracy, off.max_accuracy_drop, off.p99_ms) == (None, 0.05, 100)


def test_judge_quality_names_each_breach_and_waits_for_enough_rows() -> None:
    slo = SLO.model_copy(update={"min_online_accuracy": 0.9, "max_accuracy_drop": 0.05, "quality_min_rows": 50})
    poor = Tally(outcomes=100, labelled_rows=100, correct_rows=80)
    breached, reason, evidence = judge_quality(poor, slo, gate_accuracy=0.97)
    assert breached
    assert reason == (
        "online accuracy 80.0% < SLO 90.0%; online accuracy 80.0% is 17.0 points below the gate's 97.0% "
        "(SLO: at most 5) over 3600 s (100 rows with feedback)"
    )
    assert evidence["online_accuracy"] == 0.8 and evidence["gate_accuracy"] == 0.97
    assert judge_quality(Tally(outcomes=49, labelled_rows=49, correct_rows=0), slo, 0.97)[0] is False
    assert judge_quality(Tally(outcomes=100, labelled_rows=100, correct_rows=95), slo, 0.97)[0] is False
    assert judge_quality(Tally(outcomes=100, labelled_rows=100, correct_rows=91), slo, 0.97)[0] is True  # the drop
    rmse = SLO.model_copy(update={"max_online_rmse": 2.0, "quality_min_rows": 2})
    assert judge_quality(Tally(outcomes=2, valued_rows=2, squared_error=18.0), rmse, None)[1].startswith(
        "online rmse 3 > SLO 2 "
    )
    assert judge_quality(Tally(outcomes=2, valued_rows=2, squared_error=2.0), rmse, None)[0] is False
    ratio = SLO.model_copy(update={"max_rmse_ratio": 1.2, "quality_min_rows": 2})
    worse = Tally(outcomes=2, valued_rows=2, squared_error=2 * 1.5**2)  # rmse 1.5 against the gate's 1.0
    assert judge_quality(worse, ratio, None, gate_rmse=1.0)[1].startswith(
        "online rmse 1.5 is 1.50 times the gate's 1 (SLO: at most 1.2)"
    )
    assert judge_quality(worse, ratio, None, gate_rmse=1.3)[0] is False
    assert judge_quality(worse, ratio, None, gate_rmse=None)[0] is False  # no gate figure: nothing to hold it to


async def test_a_version_answering_worse_than_its_gate_is_degraded_once(monitor: Monitor) -> None:
    clock: Clock = monitor.clock  # type: ignore[assignment]
    published = Published()
    await anyio.to_thread.run_sync(monitor.timeline.record, validated(2, 0.96))
    answers(monitor, "2", 60, right=48, at=NOW - 60)  # 80 %: 16 points below the gate's 96 %
    answers(monitor, "1", 60, right=20, at=NOW - 60)  # worse, but version 1 has no gate figure
    await evaluate(monitor, published)
    assert published == []  # no quality SLO yet: nothing is judged

    await anyio.to_thread.run_sync(monitor.slos.update, "iris", SloUpdate(max_accuracy_drop=0.05))
    for _ in range(3):
        clock.now += 10
        await evaluate(monitor, published)
    assert [event_id for _, event_id in published] == ["degraded:iris:2:quality:1"]
    payload = published[0][0]
    assert payload.kind == "quality" and payload.version == 2 and payload.window_seconds == 3600
    assert payload.reason.startswith("online accuracy 80.0% is 16.0 points below the gate's 96.0%")
    assert payload.evidence["labelled_rows"] == 60 and payload.evidence["gate_accuracy"] == 0.96

    # the SLO is switched off: calm for a whole quality window closes the episode, no new event
    await anyio.to_thread.run_sync(monitor.slos.update, "iris", SloUpdate.model_validate({"max_accuracy_drop": None}))
    await anyio.to_thread.run_sync(monitor.slos.update, "iris", SloUpdate(quality_window_s=60))
    for _ in range(8):
        clock.now += 10
        await evaluate(monitor, published)
    assert len(published) == 1
    assert monitor.alerts.recent("iris", open_only=True) == []


async def test_an_optimized_variants_answers_are_judged_on_their_own_against_what_the_optimizer_measured(
    monitor: Monitor,
) -> None:
    """An INT8 variant answering far worse than the optimizer measured of it breaks the quality SLO on its own
    (its own episode and event, naming it), while the version's own model (FP32) is judged against the gate's
    figure, with an episode of its own."""
    clock: Clock = monitor.clock  # type: ignore[assignment]
    published = Published()
    await anyio.to_thread.run_sync(monitor.timeline.record, validated(3, 0.96))
    await anyio.to_thread.run_sync(monitor.timeline.record, optimized(3, fp32=0.96, int8=0.95))
    await anyio.to_thread.run_sync(monitor.slos.update, "iris", SloUpdate(max_accuracy_drop=0.05))
    for i in range(50):  # the INT8 variant answers 70 % right online, where the optimizer measured 95 %
        assert monitor.quality.record(labelled("3", f"q{i}", NOW - 60, [i < 35], variant="int8"))
    for i in range(10):  # its FP32 fallback answered a few, all right: too few rows to judge FP32
        assert monitor.quality.record(labelled("3", f"f{i}", NOW - 60, [True], variant="fp32"))
    await evaluate(monitor, published)
    [(payload, event_id)] = published
    assert event_id == "degraded:iris:3:quality:int8:1" and payload.variant == "int8"
    assert payload.of_optimized_variant()
    assert payload.reason == (
        "variant int8: online accuracy 70.0% is 25.0 points below the optimizer's 95.0% (SLO: at most 5) over "
        "3600 s (50 rows with feedback); by variant: int8 70.0% of 50 rows (optimizer 95.0%); fp32 100.0% of 10 "
        "rows (optimizer 96.0%)"
    )
    assert (payload.evidence["reference"], payload.evidence["reference_accuracy"]) == ("optimizer", 0.95)
    assert payload.evidence["gate_accuracy"] == 0.96 and payload.evidence["variant"] == "int8"
    assert payload.evidence["variants"]["int8"] == {
        "labelled_rows": 50, "online_accuracy": 0.7, "test_accuracy": 0.95,
        "valued_rows": 0, "online_rmse": None, "test_rmse": None,
    }  # fmt: skip
    assert list(payload.evidence["variants"]) == ["int8", "fp32"], "the most rows first"
    [alert] = monitor.alerts.recent("iris", open_only=True)
    assert (alert.variant, alert.event_id) == ("int8", event_id)

    # FP32 serves instead and answers badly too: the version's own model breaks the SLO against the gate's figure
    clock.now += 10
    for i in range(60):
        assert monitor.quality.record(labelled("3", f"g{i}", NOW - 30, [i < 30], variant="fp32"))
    await evaluate(monitor, published)
    assert [event_id for _, event_id in published] == ["degraded:iris:3:quality:int8:1", "degraded:iris:3:quality:1"]
    own = published[1][0]
    assert own.variant == "" and not own.of_optimized_variant()
    assert own.reason.startswith("online accuracy 57.1% is 38.9 points below the gate's 96.0% (SLO: at most 5)")
    assert own.evidence["reference"] == "gate" and own.evidence["variant"] == ""
    assert own.reason.endswith(
        "; by variant: fp32 57.1% of 70 rows (optimizer 96.0%); int8 70.0% of 50 rows (optimizer 95.0%)"
    )


async def test_a_variant_is_held_to_the_optimizers_figure_of_it_not_the_gates(monitor: Monitor) -> None:
    """An INT8 variant the optimizer measured 6 points below FP32 (within what it was allowed) that answers 2
    points below that online keeps the SLO: a 5-point drop is measured from what was promised of it."""
    published = Published()
    await anyio.to_thread.run_sync(monitor.timeline.record, validated(4, 0.96))
    await anyio.to_thread.run_sync(monitor.timeline.record, optimized(4, fp32=0.96, int8=0.90))
    await anyio.to_thread.run_sync(monitor.slos.update, "iris", SloUpdate(max_accuracy_drop=0.05))
    for i in range(100):  # 88 %: 2 points below the optimizer's 90 %, 8 below the gate's 96 %
        assert monitor.quality.record(labelled("4", f"v{i}", NOW - 60, [i < 88], variant="int8"))
    await evaluate(monitor, published)
    assert published == []
    for i in range(100):  # a variant the optimizer did not measure is held to the gate's figure
        assert monitor.quality.record(labelled("4", f"u{i}", NOW - 60, [i < 88], variant="pruned"))
    await evaluate(monitor, published)
    [(payload, event_id)] = published
    assert event_id == "degraded:iris:4:quality:pruned:1"
    assert payload.reason.startswith("variant pruned: online accuracy 88.0% is 8.0 points below the gate's 96.0%")


async def test_a_default_quality_slo_judges_every_model_with_feedback_unless_its_own_says_otherwise(
    tmp_path: Path,
) -> None:
    strict = SLO.model_copy(update={"min_online_accuracy": 0.9})
    monitor = sqlite_monitor(tmp_path / "monitor.db", no_reference, Clock(), default_slo=strict)
    published = Published()
    for model in ("iris", "wine"):
        for i in range(60):
            assert monitor.quality.record(labelled("1", f"{model}-{i}", NOW - 60, [i < 30], model=model))
    await anyio.to_thread.run_sync(monitor.slos.update, "wine", SloUpdate.model_validate({"min_online_accuracy": None}))
    await evaluate(monitor, published)
    assert [event_id for _, event_id in published] == ["degraded:iris:1:quality:1"]
    assert published[0][0].reason.startswith("online accuracy 50.0% < SLO 90.0%")


async def test_old_outcomes_are_forgotten_after_the_retention(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    upgrade(engine)
    store = QualityStore(engine, retention_s=3600)
    assert store.record(labelled("1", "a", NOW - 4000, [True]))
    assert store.record(labelled("1", "b", NOW - 100, [True]))
    assert store.forget_before(NOW - 3600) == 1
    assert store.by_version("iris", 0)["1"].labelled_rows == 1


async def test_outcomes_stay_out_of_the_timeline() -> None:
    timeline: list[Any] = []
    kept: list[Any] = []

    def record_many(events: list[Any]) -> list[bool]:
        kept.extend(events)
        return [True] * len(events)

    monitor: Any = SimpleNamespace(
        timeline=SimpleNamespace(record=timeline.append), quality=SimpleNamespace(record_many=record_many)
    )
    router = timeline_events(monitor)
    outcome = labelled("1", "x", NOW, [True])
    await router.dispatch(outcome)
    await router.dispatch(validated(1, 0.9))
    assert [event.id for event in kept] == ["outcome.x"]
    assert [event.data.event for event in timeline] == ["validated"]


def test_outcomes_stored_as_timeline_events_before_move_to_online_quality(tmp_path: Path) -> None:
    """Until revision 0003 every outcome was a timeline line; the upgrade moves them, counts intact."""
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(engine, "0002")
    store = TimelineStore(engine)
    assert store.record(labelled("1", "before", NOW - 60, [True, False, True]))
    assert store.record(valued("1", "valued", NOW - 60, [4.0]))
    assert store.record(validated(1, 0.9))

    upgrade(engine)
    assert [item.event for item in store.timeline("iris")] == ["validated"]
    quality = QualityStore(engine, retention_s=86400)
    tally = quality.by_version("iris", NOW - 3600)["1"]
    assert (tally.outcomes, tally.labelled_rows, tally.correct_rows) == (1, 3, 2)
    assert quality.by_version("house", NOW - 3600)["1"].rmse == 2.0
    assert not quality.record(labelled("1", "before", NOW - 60, [True, False, True]))  # its id came along


async def test_outcomes_arriving_together_are_kept_a_batch_per_transaction(monitor: Monitor) -> None:
    """The consumer hands the monitor many outcomes at once: each waits for its batch's one transaction, a
    repeat (or one kept before) is told so, and the view counts each once."""
    store = monitor.quality
    assert store.record(labelled("1", "before", NOW - 60, [True]))
    transactions: list[int] = []
    record_many = store.record_many

    def counted(events: list[Any]) -> list[bool]:
        transactions.append(len(events))
        return record_many(events)

    store.record_many = counted  # type: ignore[method-assign]
    writer = OutcomeWriter(store, max_batch=50)
    events = [labelled("1", f"b{i}", NOW - 30, [i % 2 == 0]) for i in range(120)]
    events += [labelled("1", "b0", NOW - 30, [True]), labelled("1", "before", NOW - 60, [True])]
    fresh = await asyncio.gather(*(writer.record(event) for event in events))
    assert fresh == [True] * 120 + [False, False]
    assert transactions == [50, 50, 22], "every outcome waiting when a write starts goes in it, 50 at most"
    (one,) = monitor.online_quality("iris", 3600).versions
    assert (one.outcomes, one.labelled_rows) == (121, 121)  # 120 new and the one kept before
    assert one.accuracy == pytest.approx(61 / 121, abs=1e-6)


async def test_a_failed_batch_fails_each_of_its_outcomes_and_the_next_batch_is_written(monitor: Monitor) -> None:
    calls = itertools.count()
    record_many = monitor.quality.record_many

    def flaky(events: list[Any]) -> list[bool]:
        if next(calls) == 0:
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return record_many(events)

    monitor.quality.record_many = flaky  # type: ignore[method-assign]
    writer = OutcomeWriter(monitor.quality, max_batch=2)
    results = await asyncio.gather(
        *(writer.record(labelled("1", f"c{i}", NOW - 30, [True])) for i in range(3)), return_exceptions=True
    )
    assert [type(r).__name__ for r in results] == ["OperationalError", "OperationalError", "bool"]
    assert await writer.record(labelled("1", "c0", NOW - 30, [True])) is True, "its redelivery is kept"
