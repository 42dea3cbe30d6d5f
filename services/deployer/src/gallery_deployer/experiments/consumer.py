"""`model.outcome` → the running experiments: the durable consumer `deployer-experiments`.

A thin adapter: each outcome goes to its model's running experiment, which adds it to the arm of the
version that answered (once per event id, in the same transaction as the figures) and judges. A
malformed event is dead-lettered by the consumer like any other; an outcome of a model without a
running experiment is acknowledged and dropped.
"""

from __future__ import annotations

from gallery_common.events import CloudEvent, ModelOutcome
from gallery_common.router import EventRouter

from .controller import Experiments

DURABLE = "deployer-experiments"


def outcome_events(experiments: Experiments, ack_wait: float = 30.0) -> EventRouter:
    """The durable consumer of `model.outcome`, in batches (an outcome is a small write)."""
    events = EventRouter(DURABLE, ack_wait=ack_wait, batch=100)

    @events.on(ModelOutcome)
    async def outcome(data: ModelOutcome, event: CloudEvent[ModelOutcome]) -> None:
        await experiments.add_outcome(data, event.id)

    return events
