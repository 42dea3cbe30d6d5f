"""`model.degraded` marks the version for revalidation, unless an optimized variant's answers broke the SLO:
that says nothing of the version's own model, which the gate judged."""

from __future__ import annotations

from typing import Any

from gallery_common.events import ModelDegraded, make_event
from gallery_registry.gate.degraded import MARK, degraded_events


class Tags:
    def __init__(self) -> None:
        self.merged: list[tuple[str, int, dict[str, Any]]] = []

    def merge_version_tags(self, model: str, version: int, tags: dict[str, Any]) -> None:
        self.merged.append((model, version, tags))


def degraded(variant: str, kind: str = "quality") -> Any:
    payload = ModelDegraded(model="digits", version=2, kind=kind, variant=variant, reason="online accuracy 70.0%")  # type: ignore[arg-type]
    return make_event(payload, "monitor")


async def test_the_versions_own_breach_marks_it_and_an_optimized_variants_does_not() -> None:
    store = Tags()
    events = degraded_events(store)  # type: ignore[arg-type]
    await events.dispatch(degraded("int8_dynamic"))
    assert store.merged == [], "the deployer serves FP32 instead; the version's model is not in question"
    await events.dispatch(degraded(""))
    await events.dispatch(degraded("", kind="drift"))
    assert [(v, tags[MARK], tags["degraded_kind"]) for _, v, tags in store.merged] == [
        (2, "true", "quality"),
        (2, "true", "drift"),
    ]
