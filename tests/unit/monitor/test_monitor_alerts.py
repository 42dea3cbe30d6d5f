"""Alert episodes: one alert and one model.degraded per episode, closed only after a calm window."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from gallery_common.db import make_engine
from gallery_common.events import ModelDegraded
from gallery_monitor.alerts import AlertBook, publish_pending
from gallery_monitor.migrations import upgrade

WINDOW = 60.0


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'monitor.db'}")
    upgrade(engine)
    return engine


def observe(book: AlertBook, now: float, breached: bool, kind: str = "drift") -> object:
    return book.observe(
        "iris", 3, kind, breached=breached, now=now, window_s=WINDOW, reason="feature 0 drifted", evidence={"psi": 0.9}
    )  # type: ignore[arg-type]


def test_a_figure_hovering_at_the_threshold_is_one_episode(engine: Engine) -> None:
    book = AlertBook(engine)
    # breached, fine, breached, fine... every 5 s for 10 minutes: never calm for a whole window
    opened = [observe(book, t, breached=(t // 5) % 2 == 0) for t in range(0, 600, 5)]
    assert len([a for a in opened if a is not None]) == 1
    [alert] = book.recent("iris")
    assert alert.closed_at is None and alert.event_id == "degraded:iris:3:drift:1"
    assert alert.reason == "feature 0 drifted" and alert.evidence == {"psi": 0.9} and alert.version == 3


def test_an_episode_closes_after_a_full_calm_window_and_the_next_breach_is_a_new_one(engine: Engine) -> None:
    book = AlertBook(engine)
    assert observe(book, 0, breached=True) is not None
    assert observe(book, 5, breached=False) is None  # calm starts here
    assert observe(book, 60, breached=False) is None  # 55 s calm: still open
    assert book.recent("iris", open_only=True)
    assert observe(book, 65, breached=False) is None  # 60 s calm: closed
    assert book.recent("iris", open_only=True) == []
    [closed] = book.recent("iris", open_only=False)
    assert closed.closed_at is not None and (closed.closed_at - closed.opened_at).total_seconds() == 65
    second = observe(book, 70, breached=True)
    assert second is not None and second.event_id == "degraded:iris:3:drift:2"
    assert [a.event_id for a in book.recent("iris")] == ["degraded:iris:3:drift:2", "degraded:iris:3:drift:1"]


def test_kinds_and_versions_have_their_own_episodes(engine: Engine) -> None:
    book = AlertBook(engine)
    assert observe(book, 0, breached=True, kind="slo") is not None
    assert observe(book, 0, breached=True, kind="drift") is not None
    other = book.observe("iris", 4, "slo", breached=True, now=0, window_s=WINDOW, reason="p99", evidence={})
    assert other is not None and other.event_id == "degraded:iris:4:slo:1"
    assert len(book.recent(open_only=True)) == 3
    assert book.recent("wine") == []


def test_each_variant_of_a_version_has_its_own_quality_episodes_also_after_a_restart(engine: Engine) -> None:
    def quality(book: AlertBook, variant: str, now: float, breached: bool = True) -> object:
        return book.observe(
            "iris", 3, "quality", breached=breached, now=now, window_s=WINDOW, reason="worse", variant=variant
        )

    book = AlertBook(engine)
    int8 = quality(book, "int8", 0)
    assert int8 is not None and int8.event_id == "degraded:iris:3:quality:int8:1" and int8.variant == "int8"
    own = quality(book, "", 5)  # the version's own model: its own episode, the id without a variant
    assert own is not None and own.event_id == "degraded:iris:3:quality:1" and own.variant == ""
    restarted = AlertBook(engine)
    assert restarted.open_episodes("quality") == {"iris": {(3, "int8"), (3, "")}}
    assert quality(restarted, "int8", 10) is None and quality(restarted, "", 10) is None  # the same episodes
    for now in (20, 80):
        quality(restarted, "int8", now, breached=False)  # INT8 calm for a whole window: only its episode closes
    assert [a.variant for a in restarted.recent("iris", open_only=True)] == [""]
    again = quality(restarted, "int8", 90)
    assert again is not None and again.event_id == "degraded:iris:3:quality:int8:2"


def test_a_restarted_monitor_resumes_its_open_episodes(engine: Engine) -> None:
    assert observe(AlertBook(engine), 0, breached=True) is not None
    restarted = AlertBook(engine)
    assert observe(restarted, 5, breached=True) is None  # the same episode, no second alert
    assert len(restarted.recent("iris")) == 1


async def test_each_alert_is_published_once_and_a_failed_publish_is_retried(engine: Engine) -> None:
    book = AlertBook(engine)
    observe(book, 0, breached=True)
    published: list[tuple[ModelDegraded, str]] = []
    failing = True

    async def publish(payload: ModelDegraded, event_id: str) -> None:
        if failing:
            raise ConnectionError("nats is down")
        published.append((payload, event_id))

    assert await publish_pending(book, publish) == 0
    failing = False
    assert await publish_pending(book, publish) == 1
    assert await publish_pending(book, publish) == 0
    [(payload, event_id)] = published
    assert event_id == "degraded:iris:3:drift:1"
    assert (payload.model, payload.version, payload.kind, payload.reason) == ("iris", 3, "drift", "feature 0 drifted")
    assert payload.evidence == {"psi": 0.9} and payload.window_seconds == WINDOW
