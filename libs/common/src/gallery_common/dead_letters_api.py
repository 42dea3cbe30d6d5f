"""The dead letters over REST, on every service that publishes lifecycle events.

`GET /admin/dead-letters`: the latest dead letters of the projects the caller is an admin of, each with
the service that may put it back. `POST /admin/dead-letters/{seq}/redeliver`: a service puts back a dead
letter of an event it publishes and takes it out of the dead letters.

A dead letter goes back as the one NATS user that may publish its subject (`nats_auth.publisher_of`:
model.trained as the trainer). `gallery events redeliver` sends it itself where it holds that user's
password; where it does not (on Kubernetes an operator holds only the `cli` user's), and from the
Gallery's Dead letters page, the publishing service is asked instead. It reads the letter by its number
(the caller sends no bytes to publish) and republishes the event it copies, as the lifecycle stream stored
it, for the consumer that gave up on it (`EventBus.redeliver`). A service that keeps an audit trail (all but
the gateway) records who put it back in the event's project's chain; the CLI sending it itself records
nothing (it may only read the trail).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import orjson
from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel

from .audit import AuditAction, AuditChange
from .auth import Caller, requires
from .deps import CallerDep
from .errors import Conflict, Forbidden, NotFound, Unavailable
from .events import event_of_subject
from .nats_auth import project_scope, publisher_of_subject
from .projects import highest
from .settings import GallerySettings, Role

if TYPE_CHECKING:
    from .app import ServiceResources
    from .bus import DeadLetter, EventBus

MAX_LISTED = 1000  # as many as `gallery events redeliver --all` looks at

router = APIRouter(prefix="/admin/dead-letters", tags=["events"], dependencies=[requires(Role.admin)])


class DeadLetterPublic(BaseModel):
    """A dead letter as an operator reads it; `publisher` is the service that may put it back (None: none may)."""

    seq: int
    time: datetime | None
    subject: str
    project: str | None
    event_id: str | None
    consumer: str | None
    deliveries: int | None
    reason: str
    publisher: str | None
    event_seq: int | None  # the event's sequence in MODEL_EVENTS: what a put-back sends (None: cannot go back)


def described(letter: DeadLetter) -> DeadLetterPublic:
    found = event_of_subject(letter.original_subject)
    return DeadLetterPublic(
        seq=letter.seq,
        time=letter.time,
        subject=letter.original_subject,
        project=found[1] if found else None,
        event_id=letter.event_id,
        consumer=letter.consumer,
        deliveries=letter.deliveries,
        reason=letter.reason,
        publisher=publisher_of_subject(letter.original_subject),
        event_seq=letter.original_seq,
    )


def is_admin_of(caller: Caller, project: str | None) -> bool:
    """Whether `caller` may see and put back the letters of `project` (None: a subject without a project):
    an admin there or installation-wide. A project that does not exist (yet) is an installation admin's,
    as a letter refused for naming it is."""
    role = highest(caller.role, caller.projects.get(project)) if project else caller.role
    return role is not None and role.rank >= Role.admin.rank


def _bus(request: Request) -> EventBus:
    resources: ServiceResources = request.app.state.resources
    bus = resources.bus
    if bus is None or not bus.is_connected:
        raise Unavailable(f"the {resources.settings.service_name} is not connected to NATS; try again once it is")
    return bus


@router.get("", summary="The latest dead letters of the projects the caller is an admin of")
async def dead_letters(
    request: Request,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LISTED)] = 100,
    consumer: Annotated[str | None, Query(description="Only this durable consumer's")] = None,
) -> list[DeadLetterPublic]:
    """Newest first. A letter whose subject names no project (not a lifecycle event) is shown to
    installation admins only."""
    shown: list[DeadLetterPublic] = []
    for letter in reversed(await _bus(request).dead_letters(MAX_LISTED)):
        public = described(letter)
        if consumer is not None and public.consumer != consumer:
            continue
        if is_admin_of(caller, public.project):
            shown.append(public)
            if len(shown) == limit:
                break
    return shown


def redelivery(letter: DeadLetter, project: str, caller: Caller) -> AuditChange:
    """A dead letter put back, as its project's audit chain records it (with the event's model and version
    when its payload names them)."""
    try:
        data = orjson.loads(letter.data).get("data")
    except (orjson.JSONDecodeError, AttributeError):  # not JSON, or not an object
        data = None
    model, version = (data.get("model"), data.get("version")) if isinstance(data, dict) else (None, None)
    return AuditChange(
        project=project,
        actor=caller.name,
        action=AuditAction.event_redelivered,
        model=model if isinstance(model, str) else None,
        version=version if isinstance(version, int) else None,
        target=f"dead-letter/{letter.seq}",
        before={"subject": letter.original_subject, "consumer": letter.consumer, "reason": letter.reason},
        after={"event_id": letter.event_id, "redelivered_to": letter.consumer},
        dedupe_key=f"redelivery:{letter.seq}",
    )


class Redelivered(BaseModel):
    """A dead letter put back on its subject, for its consumer only."""

    seq: int
    subject: str
    event_id: str | None
    consumer: str
    publisher: str


@router.post(
    "/{seq}/redeliver",
    summary="Put a dead letter of this service's events back for the consumer that gave up on it",
    responses={404: {"description": "No dead letter under that number"}, 409: {"description": "Not ours to send"}},
)
async def redeliver(seq: Annotated[int, Path(ge=1)], request: Request, caller: CallerDep) -> Redelivered:
    """Republish dead letter `seq` on its original subject, as this service (its publisher); only the consumer
    that dead-lettered it handles it again, then take it out of the dead letters. Needs the admin role in the
    event's project."""
    settings: GallerySettings = request.app.state.settings
    me = settings.service_name
    bus = _bus(request)
    letter = await bus.dead_letter(seq)
    found = event_of_subject(letter.original_subject)
    publisher = publisher_of_subject(letter.original_subject)
    if found is None or publisher is None:
        raise Conflict(f"dead letter {seq}: {letter.original_subject} is not a lifecycle event's subject")
    event, project = found
    if publisher != me:
        raise Conflict(
            f"dead letter {seq} is a model.{event}, which only the {publisher} publishes: ask the {publisher}"
        )
    if not is_admin_of(caller, project):
        raise Forbidden(f"putting back project {project!r}'s dead letters needs the admin role there")
    scope = project_scope(settings)
    if scope and project not in scope:
        raise Conflict(
            f"this {me} serves the projects {', '.join(scope)} only, not {project!r}: ask one that serves it"
        )
    if not letter.consumer:
        raise NotFound(f"dead letter {seq} names no consumer to give it back to")
    await bus.redeliver(letter)
    await bus.forget_dead_letter(seq)
    resources: ServiceResources = request.app.state.resources
    if resources.trail is not None:
        await resources.trail.record(redelivery(letter, project, caller))
    return Redelivered(
        seq=seq, subject=letter.original_subject, event_id=letter.event_id, consumer=letter.consumer, publisher=me
    )
