"""`model.validated` → an optimization job for the version, once.

The optimizer's replicas share this durable consumer, so each event reaches one of them. The handler
only records the job and puts it on the `OPTIMIZE_JOBS` work queue (whichever replica takes it runs
it), so the event is acked at once. A redelivered or replayed event finds the version's job: queued
or running, it is put on the queue again, which changes nothing when its message is there; succeeded,
its `model.optimized` is published again under the same event id (JetStream stores it once); failed,
the job runs again.
"""

from __future__ import annotations

import anyio

from gallery_common.bus import EventBus
from gallery_common.errors import InvalidRequest
from gallery_common.events import CloudEvent, ModelOptimized, ModelValidated
from gallery_common.router import EventRouter
from gallery_common.telemetry import get_logger
from gallery_common.work_queue import WorkQueue

from .delivery import optimized_event_id
from .job_store import JobStore

DURABLE = "optimizer"
ACK_WAIT_SECONDS = 120.0
log = get_logger(__name__)


def validated_events(jobs: JobStore, queue: WorkQueue, bus: EventBus) -> EventRouter:
    """The durable consumer `optimizer`: one optimization job per validated version (an event without
    an ONNX artifact is dead-lettered)."""
    events = EventRouter(DURABLE, ack_wait=ACK_WAIT_SECONDS, batch=1)

    @events.on(ModelValidated)
    async def validated(data: ModelValidated, event: CloudEvent[ModelValidated]) -> None:
        """Queue the validated version's optimization, or re-announce the one already done."""
        if "onnx" not in data.artifacts:
            raise InvalidRequest(f"model.validated for {data.model}:{data.version} carries no onnx artifact")
        policy = await anyio.to_thread.run_sync(jobs.get_policy, data.model)
        submission = await anyio.to_thread.run_sync(
            lambda: jobs.submit(
                data.model,
                data.version,
                data.artifacts,
                policy,
                project=data.project,
                source_event_id=event.id,
                traceparent=event.traceparent,
            )
        )
        log.info(
            "model.validated", model=data.model, version=data.version, job=submission.job.id, outcome=submission.outcome
        )
        if submission.needs_run or submission.outcome == "active":
            await queue.submit(submission.job.id)
        elif submission.outcome == "succeeded" and submission.result is not None:
            payload = ModelOptimized.model_validate(submission.result)
            await bus.publish(payload, event_id=optimized_event_id(data.model, data.version))

    return events
