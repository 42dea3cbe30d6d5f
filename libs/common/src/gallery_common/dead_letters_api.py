"""`POST /admin/dead-letters/{seq}/redeliver`: a service puts back a dead letter of an event it publishes.

`gallery events redeliver` sends a dead letter back as the one NATS user that may publish its subject
(`nats_auth.publisher_of`: model.trained as the trainer). Where the CLI has no credentials of that user
(on Kubernetes an operator holds only the `cli` user's), it asks the publishing service instead, as an
admin over its REST API. The service reads the letter from the dead letters itself (the caller sends
only its number, never bytes to publish) and republishes it for the consumer that gave up on it
(`EventBus.redeliver`). Taking the letter out stays the CLI's: it alone may delete from that stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel

from .auth import requires
from .deps import CallerDep
from .errors import Conflict, NotFound, Unavailable
from .events import event_of_subject
from .nats_auth import project_scope, publisher_of
from .projects import authorize_in
from .settings import Role

if TYPE_CHECKING:
    from .app import ServiceResources

router = APIRouter(prefix="/admin/dead-letters", tags=["events"], dependencies=[requires(Role.admin)])


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
    that dead-lettered it handles it again. Needs the admin role in the event's project. The letter stays in
    the dead letters until the CLI takes it out."""
    resources: ServiceResources = request.app.state.resources
    settings = resources.settings
    me = settings.service_name
    bus = resources.bus
    if bus is None or not bus.is_connected:
        raise Unavailable(f"the {me} is not connected to NATS; try again once it is")
    letter = await bus.dead_letter(seq)
    found = event_of_subject(letter.original_subject)
    publisher = publisher_of(found[0]) if found else None
    if found is None or publisher is None:
        raise Conflict(f"dead letter {seq}: {letter.original_subject} is not a lifecycle event's subject")
    event, project = found
    if publisher != me:
        raise Conflict(
            f"dead letter {seq} is a model.{event}, which only the {publisher} publishes: ask the {publisher}"
        )
    authorize_in(caller, project, Role.admin, settings.project_directory())
    scope = project_scope(settings)
    if scope and project not in scope:
        raise Conflict(
            f"this {me} serves the projects {', '.join(scope)} only, not {project!r}: ask one that serves it"
        )
    if not letter.consumer:
        raise NotFound(f"dead letter {seq} names no consumer to give it back to")
    await bus.redeliver(letter)
    return Redelivered(
        seq=seq, subject=letter.original_subject, event_id=letter.event_id, consumer=letter.consumer, publisher=me
    )
