"""Who may say what on the bus: one NATS user per service (and the CLI, and model servers), each
allowed to publish only the subjects it owns and to use only its own JetStream consumers.

Only the trainer publishes `model.trained`, only the registry `model.validated` / `model.rejected`,
only the optimizer `model.optimized`, only the deployer `model.deployed` / `model.rolled_back` /
`model.deployment_failed` / `model.experiment_concluded`, only the monitor `model.degraded`; only the
deployer writes the gateways' routes (the `routes` KV bucket), which gateways may only read and watch; only
the gateway publishes traffic samples, `model.usage` and `model.outcome` and keeps the `outcomes` KV bucket,
only model servers answer `infer.<model>`, and only the Gallery keeps the sign-in sessions (the
`gallery_sessions` and `gallery_logins` KV buckets); only the CLI and the publishing services take dead
letters out, once they put them back (as the event's publisher: `publisher_of`). Event subjects are
`model.<event>.<project>`; these users publish their events in every project (`model.<event>.*`). Each
user's request replies come on an inbox prefix of its own (`_INBOX.<user>.`), so no one can read another's
replies.

`gallery up` makes a password per user in `$GALLERY_HOME/nats/users/<user>.password` (0600) and
gives nats-server their bcrypt hashes; on Kubernetes they come from Secrets. A process finds its
credentials with `credentials_for`: `GALLERY_NATS_USER` / `GALLERY_NATS_PASSWORD` when set, else its
file under `$GALLERY_HOME`, else none (a server without authorization).

Projects: `principals(projects=[...])` adds, for each lifecycle service and project, a project-bound user
`<service>_<project>` (e.g. `trainer_alpha`). `_` is in no lifecycle service's nor project's name, so the
name cannot collide with another user's, and it is valid where a user's name goes: a Kubernetes Secret key,
an environment variable, a NATS subject token. Its inbox `_INBOX.trainer_alpha.` is not under
`_INBOX.trainer.` (a dot would put it there, and the installation-wide user could read its replies). It may publish only
`model.<event>.<project>` and `dlq.model.*.<project>`, and create its consumers only through
`$JS.API.CONSUMER.CREATE.MODEL_EVENTS.<durable>_<project>.model.*.<project>`, the form in which
nats-server 2.10 checks the request's filter against the subject: not the filterless CREATE nor the legacy
DURABLE.CREATE (whose filter it does not check), not direct or MSG.GET, not STREAM.UPDATE (a republish
would copy every project's events to it). So the server itself refuses it another project's events.
A process scoped to exactly one project (GALLERY_PROJECT_SCOPE=alpha) finds that user's password file first.
The lifecycle bus is the scope of this binding: work queues, gateway routes and leader claims stay
installation-wide, so a project-bound user has none of them, nor the audit trail (reading it shows every
project's changes).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .contracts.names import INFER_PREFIX, JOB_STATUS_PREFIX, JOBS_PREFIX, SAMPLE_PREFIX
from .settings import GallerySettings

# The permission table names subjects of the event schemas and of modules built on the NATS client;
# they are imported where the table is built, so that reading credentials (`credentials_for`, at a
# model server's start) loads neither.
if TYPE_CHECKING:
    from .work_queue import QueueNames

EVENTS_STREAM = "MODEL_EVENTS"
DLQ_STREAM = "DEAD_LETTERS"
JOBS_STREAM = "INFER_JOBS"
SAMPLES = f"{SAMPLE_PREFIX}>"
PASSWORD_SUFFIX = ".password"
PROJECT_USER_SEPARATOR = "_"
# the lifecycle services that may run bound to one project, and the durable consumers each runs
BINDABLE_SERVICES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "trainer": (("trained",), ("trainer-search",)),
    "registry": (("validated", "rejected"), ("registry-gate", "registry-degraded")),
    "optimizer": (("optimized",), ("optimizer",)),
    "deployer": (
        ("deployed", "rolled_back", "deployment_failed", "experiment_concluded"),
        # every deployer replica also adds the gateways' usage reports to the usage store
        ("deployer", "deployer-experiments", "deployer-usage"),
    ),
    "monitor": (("degraded",), ("monitor",)),
}
GATEWAY_EVENTS = ("usage", "outcome")  # the gateway's lifecycle events (it runs no consumer)
LEADERS_BUCKET = "leaders"  # gallery_common.leader's bucket (it imports this module's users, not the reverse)
LEADERS_STREAM = f"KV_{LEADERS_BUCKET}"


@dataclass(frozen=True)
class NatsCredentials:
    """A NATS user and password, and the inbox prefix that user's permissions allow."""

    user: str
    password: str = field(repr=False)

    @property
    def inbox_prefix(self) -> str:
        return inbox_prefix(self.user)


def inbox_prefix(user: str) -> str:
    return f"_INBOX.{user}"


@dataclass(frozen=True)
class Principal:
    """One NATS user's permissions: subjects it may publish and subscribe to."""

    name: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    # answer requests (publish to the reply subject of a message it received), as a responder must
    allow_responses: bool = False

    def permissions(self) -> dict[str, object]:
        """The `permissions` block of this user in nats-server's configuration."""
        block: dict[str, object] = {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }
        if self.allow_responses:
            block["allow_responses"] = True
        return block


def _stream_upkeep(*streams: str) -> tuple[str, ...]:
    """Create a stream or bring it to the configuration the code expects, and read its state."""
    api = ["$JS.API.INFO"]
    for stream in streams:
        api += [f"$JS.API.STREAM.{verb}.{stream}" for verb in ("INFO", "CREATE", "UPDATE")]
    return tuple(api)


def _durable(stream: str, durable: str) -> tuple[str, ...]:
    """Create, read and pull from one durable consumer, and settle (ack, nak, term) its messages."""
    return (
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
    )


def publisher_of(event: str) -> str | None:
    """The NATS user that alone may publish lifecycle event `event` (None: no user may)."""
    for service, (events, _) in BINDABLE_SERVICES.items():
        if event in events:
            return service
    return "gateway" if event in GATEWAY_EVENTS else None


def publisher_of_subject(subject: str) -> str | None:
    """The NATS user that alone may publish on `subject` (`model.<event>.<project>`); None for any other."""
    from .events import event_of_subject

    found = event_of_subject(subject)
    return publisher_of(found[0]) if found else None


def publishes_events(service: str) -> bool:
    """Whether `service` publishes lifecycle events (and so may put their dead letters back)."""
    return service in BINDABLE_SERVICES or service == "gateway"


def project_user(service: str, project: str) -> str:
    """The NATS user of `service` bound to `project`."""
    return f"{service}{PROJECT_USER_SEPARATOR}{project}"


def bound_project(user: str) -> str | None:
    """The project a project-bound user (`<service>_<project>`) is bound to; None for any other user."""
    from .projects import PROJECT_PATTERN

    service, _, project = user.partition(PROJECT_USER_SEPARATOR)
    return project if service in BINDABLE_SERVICES and re.fullmatch(PROJECT_PATTERN, project) else None


def project_scope(settings: GallerySettings) -> tuple[str, ...]:
    """The projects GALLERY_PROJECT_SCOPE names (sorted, no repeats); empty means every project."""
    from .projects import PROJECT_PATTERN, PROJECT_RULE

    names = sorted({name.strip() for name in settings.project_scope.split(",") if name.strip()})
    for name in names:
        if not re.fullmatch(PROJECT_PATTERN, name):
            raise ValueError(f"GALLERY_PROJECT_SCOPE: {name!r} is not a project name ({PROJECT_RULE})")
    return tuple(names)


def _bound_service(service: str, project: str) -> Principal:
    """`service` bound to `project`: its events and dead letters there, its consumers filtered to it."""
    from .consumer import DLQ_PREFIX, scoped_durable
    from .events import ANY_PROJECT, subject_for

    events, durables = BINDABLE_SERVICES[service]
    name = project_user(service, project)
    publish = ["$JS.API.INFO", f"$JS.API.STREAM.INFO.{EVENTS_STREAM}", f"$JS.API.STREAM.INFO.{DLQ_STREAM}"]
    publish += [subject_for(event, project) for event in events]
    publish.append(DLQ_PREFIX + subject_for(ANY_PROJECT, project))
    for durable in durables:
        bound = scoped_durable(durable, [project])
        publish += [
            # `*` matches the event token only: `model.>` or `model.*.*` as a filter is refused
            f"$JS.API.CONSUMER.CREATE.{EVENTS_STREAM}.{bound}.{subject_for(ANY_PROJECT, project)}",
            f"$JS.API.CONSUMER.INFO.{EVENTS_STREAM}.{bound}",
            f"$JS.API.CONSUMER.MSG.NEXT.{EVENTS_STREAM}.{bound}",
            f"$JS.ACK.{EVENTS_STREAM}.{bound}.>",
        ]
    # no audit trail (reading it would show every project's changes) and no KV buckets beyond the projects
    publish += _follow_projects()
    return Principal(name, tuple(publish), (f"{inbox_prefix(name)}.>",))


def _leader_claim(role: str) -> tuple[str, ...]:
    """Keep the `leaders` bucket, read the claims in it and write only `role`'s own (leader election)."""
    return (
        *_stream_upkeep(LEADERS_STREAM),
        f"$JS.API.STREAM.MSG.GET.{LEADERS_STREAM}",
        f"$KV.{LEADERS_BUCKET}.{role}",
    )


def _service(name: str, events: Iterable[str] = (), durables: Iterable[str] = ()) -> Principal:
    """A service on the lifecycle bus: it keeps the streams, publishes its own events, runs its consumers
    and dead-letters what they cannot handle."""
    from .consumer import DLQ_PREFIX
    from .events import subject_for

    publish = [*_stream_upkeep(EVENTS_STREAM, DLQ_STREAM), f"{DLQ_PREFIX}>", *_put_back_dead_letters()]
    publish += [subject_for(event) for event in events]
    for durable in durables:
        publish += _durable(EVENTS_STREAM, durable)
    return Principal(name, tuple(publish), (f"{inbox_prefix(name)}.>",))


def _put_back_dead_letters() -> tuple[str, ...]:
    """Read the dead letters and the events they copy (a letter goes back as the stream stored its event), and
    take one out once put back: a publisher does so for its own events' letters (`dead_letters_api`; listing
    them also needs the stream's info)."""
    return (
        f"$JS.API.STREAM.MSG.GET.{DLQ_STREAM}",
        f"$JS.API.STREAM.MSG.GET.{EVENTS_STREAM}",
        f"$JS.API.STREAM.MSG.DELETE.{DLQ_STREAM}",
    )


def _read_events(name: str) -> tuple[str, ...]:
    """Read the lifecycle and dead-letter streams: ordered ephemeral consumers and direct gets."""
    return (
        *_stream_upkeep(EVENTS_STREAM, DLQ_STREAM),
        "$JS.API.STREAM.NAMES",
        f"$JS.API.CONSUMER.CREATE.{EVENTS_STREAM}",
        f"$JS.API.CONSUMER.CREATE.{EVENTS_STREAM}.>",
        f"$JS.API.CONSUMER.DELETE.{EVENTS_STREAM}.>",
        f"$JS.API.CONSUMER.INFO.{EVENTS_STREAM}.>",
        f"$JS.API.STREAM.MSG.GET.{EVENTS_STREAM}",
        f"$JS.API.STREAM.MSG.GET.{DLQ_STREAM}",
        f"$JS.FC.{EVENTS_STREAM}.>",
    )


def _write_bucket(stream: str, subjects: str) -> tuple[str, ...]:
    """Keep a KV bucket (its stream), read its keys and write them."""
    return (*_stream_upkeep(stream), f"$JS.API.STREAM.MSG.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>", subjects)


def _write_routes() -> tuple[str, ...]:
    """Keep the gateways' routes bucket, read its keys and write them (the deployer only)."""
    from .routes_kv import STREAM, SUBJECTS

    return _write_bucket(STREAM, SUBJECTS)


def _keep_outcomes() -> tuple[str, ...]:
    """Keep the outcome bucket the gateway joins feedback to its answers in."""
    from .outcomes_kv import STREAM, SUBJECTS

    return _write_bucket(STREAM, SUBJECTS)


def _follow_bucket(stream: str) -> tuple[str, ...]:
    """Bind to a KV bucket and watch it with ordered consumers: reading, no writing."""
    return (
        "$JS.API.INFO",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.FC.{stream}.>",
    )


def _follow_routes() -> tuple[str, ...]:
    """Watch the routes bucket (a gateway)."""
    from .routes_kv import STREAM as ROUTES_STREAM

    return _follow_bucket(ROUTES_STREAM)


def _follow_projects() -> tuple[str, ...]:
    """Watch the projects bucket (every service: who is a member of which project)."""
    from .projects_kv import STREAM as PROJECTS_STREAM

    return _follow_bucket(PROJECTS_STREAM)


def _write_projects() -> tuple[str, ...]:
    """Keep the projects bucket, read and write its keys (the registry only)."""
    from .projects_kv import STREAM, SUBJECTS

    return (*_write_bucket(STREAM, SUBJECTS), "$JS.API.STREAM.NAMES", f"$JS.API.CONSUMER.CREATE.{STREAM}.>")


def _keep_sessions() -> tuple[str, ...]:
    """Keep the sign-in session and login buckets, read and write their keys (the Gallery only)."""
    from .sessions_kv import BUCKETS, stream_of, subjects_of

    return tuple(subject for bucket in BUCKETS for subject in _write_bucket(stream_of(bucket), subjects_of(bucket)))


def _audit(*, write: bool) -> tuple[str, ...]:
    """Keep the audit streams and read them (direct gets); with `write`, append records and anchors.

    Nobody gets `$JS.API.STREAM.MSG.DELETE`, `.PURGE` or `.DELETE` on them: with the streams'
    deny_delete and deny_purge, a record once written stays for the retention period.
    """
    from .audit_log import ANCHOR_PREFIX, ANCHOR_STREAM, AUDIT_PREFIX, AUDIT_STREAM

    # `$JS.API.INFO` is every such user's already (its stream upkeep)
    upkeep = tuple(subject for subject in _stream_upkeep(AUDIT_STREAM, ANCHOR_STREAM) if subject != "$JS.API.INFO")
    read = (
        *upkeep,
        f"$JS.API.STREAM.MSG.GET.{AUDIT_STREAM}",
        f"$JS.API.STREAM.MSG.GET.{ANCHOR_STREAM}",
    )
    return (*read, f"{AUDIT_PREFIX}>", f"{ANCHOR_PREFIX}>") if write else read


def _take_jobs(queue: QueueNames) -> tuple[str, ...]:
    """Keep a work queue's stream, put jobs on it and take them with its shared durable consumer."""
    return (*_stream_upkeep(queue.stream), queue.subjects, *_durable(queue.stream, queue.durable))


def principals(services: Iterable[str] = (), projects: Iterable[str] = ()) -> dict[str, Principal]:
    """Every NATS user of a Model Gallery installation; `services` adds a user for other installed
    services (their durable consumer is named after them; they publish no lifecycle event); `projects`
    adds a project-bound user (`<service>_<project>`) per lifecycle service and project."""
    from .events import subject_for
    from .work_queue import OPTIMIZE_JOBS, TRAIN_JOBS

    table = [_service(name, events, durables) for name, (events, durables) in BINDABLE_SERVICES.items()]
    found = {p.name: p for p in table}
    monitor = found["monitor"]
    found["monitor"] = Principal("monitor", monitor.publish, (*monitor.subscribe, SAMPLES))
    deployer = found["deployer"]
    found["deployer"] = Principal("deployer", (*deployer.publish, *_write_routes()), deployer.subscribe)
    # the gateway publishes traffic samples, its usage reports (model.usage) and the outcomes it joins
    gateway_publish = (
        SAMPLES,
        *map(subject_for, GATEWAY_EVENTS),
        *_follow_routes(),
        *_keep_outcomes(),
        f"$JS.API.STREAM.INFO.{DLQ_STREAM}",
        *_put_back_dead_letters(),
    )
    found["gateway"] = Principal("gateway", gateway_publish, (f"{inbox_prefix('gateway')}.>",))
    found["modelserver"] = Principal(
        "modelserver",
        (
            *_stream_upkeep(JOBS_STREAM),
            "$JS.API.STREAM.NAMES",  # nats.py's pull_subscribe finds the stream by subject
            f"$JS.API.CONSUMER.CREATE.{JOBS_STREAM}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{JOBS_STREAM}.>",
            f"$JS.API.CONSUMER.INFO.{JOBS_STREAM}.>",
            f"$JS.API.CONSUMER.MSG.NEXT.{JOBS_STREAM}.>",
            f"$JS.ACK.{JOBS_STREAM}.>",
            f"{JOB_STATUS_PREFIX}>",
        ),
        (f"{INFER_PREFIX}*", f"{inbox_prefix('modelserver')}.>"),
        allow_responses=True,
    )
    # the operator's tool: reads every event and dead letter, takes out the dead letters it put back, calls
    # models and submits batch jobs
    found["cli"] = Principal(
        "cli",
        (
            *_read_events("cli"),
            f"$JS.API.STREAM.MSG.DELETE.{DLQ_STREAM}",
            f"{INFER_PREFIX}*",
            f"{JOBS_PREFIX}*",
            f"$JS.API.STREAM.INFO.{JOBS_STREAM}",
        ),
        (f"{inbox_prefix('cli')}.>", f"{JOB_STATUS_PREFIX}>"),
    )
    for role in ("deployer", "monitor"):  # replicas elect a leader (gallery_common.leader)
        elector = found[role]
        found[role] = Principal(role, (*elector.publish, *_leader_claim(role)), elector.subscribe)
    for role, queue in (("trainer", TRAIN_JOBS), ("optimizer", OPTIMIZE_JOBS)):  # replicas compete for jobs
        worker = found[role]
        found[role] = Principal(role, (*worker.publish, *_take_jobs(queue)), worker.subscribe)
    # the Gallery keeps its sign-in sessions on the bus and follows the projects like every service
    found["gallery"] = Principal("gallery", (*_keep_sessions(), *_follow_projects()), (f"{inbox_prefix('gallery')}.>",))
    for name in services:
        if name not in found:
            found[name] = _service(name, durables=[name])
    # every control-plane service records its changes in the audit trail; the CLI reads and verifies it
    for role in ("trainer", "registry", "optimizer", "deployer", "monitor"):
        recorder = found[role]
        found[role] = Principal(role, (*recorder.publish, *_audit(write=True)), recorder.subscribe)
    cli = found["cli"]
    found["cli"] = Principal("cli", (*cli.publish, *_audit(write=False)), cli.subscribe)
    # every service follows the projects and their members; only the registry changes them
    for role in ("trainer", "registry", "optimizer", "deployer", "monitor", "gateway"):
        follower = found[role]
        found[role] = Principal(role, (*follower.publish, *_follow_projects()), follower.subscribe)
    registry = found["registry"]
    found["registry"] = Principal("registry", (*registry.publish, *_write_projects()), registry.subscribe)
    for project in sorted(set(projects)):
        for service in BINDABLE_SERVICES:
            bound = _bound_service(service, project)
            found[bound.name] = bound
    return found


def password_path(home: Path, user: str) -> Path:
    return home / "nats" / "users" / f"{user}{PASSWORD_SUFFIX}"


def ensure_passwords(home: Path, users: Iterable[str]) -> dict[str, str]:
    """A password for each user, made once and kept in its own 0600 file (kept across restarts)."""
    folder = password_path(home, "x").parent
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    passwords: dict[str, str] = {}
    for user in users:
        path = password_path(home, user)
        if not path.exists():
            # created 0600 before anything is written to it
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as out:
                out.write(secrets.token_urlsafe(32))
        passwords[user] = path.read_text().strip()
    return passwords


def credentials_for(settings: GallerySettings, user: str | None = None) -> NatsCredentials | None:
    """This process's NATS credentials: the `GALLERY_NATS_*` settings, else the password file of `user`
    (default: the service's name) under `$GALLERY_HOME`, else None."""
    if settings.nats_user and settings.nats_password is not None:
        return NatsCredentials(settings.nats_user, settings.nats_password.get_secret_value())
    name = user or settings.nats_user or settings.service_name
    scope = project_scope(settings)
    if user is None and not settings.nats_user and len(scope) == 1:
        bound = password_path(settings.home.resolve(), project_user(name, scope[0]))
        if bound.exists():
            return NatsCredentials(project_user(name, scope[0]), bound.read_text().strip())
    path = password_path(settings.home.resolve(), name)
    if path.exists():
        return NatsCredentials(name, path.read_text().strip())
    return None


def authorization_block(principal_table: Mapping[str, Principal], password_hashes: Mapping[str, str]) -> str:
    """nats-server's `authorization` block: each user with its password hash and permissions."""
    import json

    users = [
        {"user": name, "password": password_hashes[name], "permissions": principal.permissions()}
        for name, principal in principal_table.items()
        if name in password_hashes
    ]
    # nats-server's configuration format accepts JSON values
    return f"authorization {{\n  users: {json.dumps(users, indent=2)}\n}}\n"
