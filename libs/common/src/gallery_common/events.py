"""Lifecycle events: a CloudEvents 1.0 envelope around one typed payload per event.

Subjects are `model.<event>.<project>` (the project of the payload), `type` is
`io.modelgallery.model.<event>.v1` and the CloudEvent `subject` is `<model>/<version>`. Large things
travel as an `ArtifactRef` (URI + sha256).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .contracts.names import MODEL_NAME_PATTERN
from .contracts.refs import ArtifactRef, Lineage, Signature
from .contracts.refs import TensorSpec as TensorSpec
from .contracts.request_ids import REQUEST_ID_PATTERN
from .projects import DEFAULT_PROJECT, PROJECT_PATTERN

SUBJECT_PREFIX = "model"
TYPE_PREFIX = "io.modelgallery.model"
NAME_PATTERN = MODEL_NAME_PATTERN


class Payload(BaseModel):
    """Base of every event payload; `event` names the lifecycle step."""

    model_config = ConfigDict(extra="forbid")
    event: ClassVar[str]

    model: str = Field(pattern=NAME_PATTERN)
    project: str = Field(
        default=DEFAULT_PROJECT, pattern=PROJECT_PATTERN, description="the project the model belongs to"
    )

    def version_label(self) -> str:
        """The `<version>` half of the CloudEvent subject."""
        return str(getattr(self, "version", ""))


class VersionedPayload(Payload):
    version: int = Field(ge=1)


class ModelTrained(Payload):
    """A training run produced a candidate; the registry assigns its version.

    Artifact roles: `onnx` (FP32, one self-contained file, preprocessing baked in: raw features
    in as `features` FP32 [-1, F], `logits` FP32 [-1, C] out), `weights` (safetensors), `spec`
    (JSON: job spec, architecture, preprocessing), and the splits `train_split`,
    `validation_split`, `test_split` (NPZ with `x` FP32 [N, F] raw features and `y` labels).
    """

    event: ClassVar[str] = "trained"
    run_id: str = Field(min_length=1)
    artifacts: dict[str, ArtifactRef] = Field(description="role -> artifact: weights, onnx, spec, test_split, ...")
    task: Literal["classification", "regression"] = "classification"
    class_names: list[str] | None = None
    signature: Signature | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    lineage: Lineage = Field(default_factory=Lineage)
    semver: str | None = None

    def version_label(self) -> str:
        return self.run_id


class ModelValidated(VersionedPayload):
    event: ClassVar[str] = "validated"
    run_id: str | None = None
    semver: str | None = None
    artifacts: dict[str, ArtifactRef] = Field(default_factory=dict)
    report: dict[str, Any] = Field(default_factory=dict)


class ModelRejected(VersionedPayload):
    event: ClassVar[str] = "rejected"
    run_id: str | None = None
    reasons: list[str] = Field(min_length=1)
    report: dict[str, Any] = Field(default_factory=dict)


class VariantResult(BaseModel):
    name: str
    artifact: ArtifactRef | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    error: str | None = None
    cpu_target: str | None = Field(default=None, description="the CPUs the variant is built for, when not any")


class ModelOptimized(VersionedPayload):
    event: ClassVar[str] = "optimized"
    recommended: str
    recommended_artifact: ArtifactRef
    variants: list[VariantResult] = Field(default_factory=list)
    report: ArtifactRef | None = None
    hardware_class: str | None = Field(default=None, description="the class of CPU the variants were measured on")
    recommendations: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "the variant recommended per target, `<hardware class>/<provider>` (e.g. `cpu-x86-avx2/openvino`) -> "
            "variant name; `recommended` is the generic choice for a target with none"
        ),
    )


FP32_VARIANT = "fp32"
"""The variant a version is first deployed as: its own ONNX file, as the gate validated it (the optimizer's
other variants have names of their own)."""


class ModelDeployed(VersionedPayload):
    event: ClassVar[str] = "deployed"
    deployment_id: str
    variant: str = FP32_VARIANT
    artifact: ArtifactRef | None = None
    stage: Literal["canary", "production", "shadow"] = "production"
    traffic_percent: float = Field(default=100.0, ge=0, le=100)
    runtime: str = "local"
    endpoint: str | None = None
    fallback: str | None = Field(
        default=None, description="why a fallback placement or execution provider was used, if one was"
    )
    execution_provider: str | None = Field(
        default=None,
        description="the ONNX Runtime execution provider serving (e.g. OpenVINOExecutionProvider); None: not known",
    )


class ModelDeploymentFailed(VersionedPayload):
    event: ClassVar[str] = "deployment_failed"
    deployment_id: str | None = None
    reason: str = Field(min_length=1)


class ModelRolledBack(VersionedPayload):
    """`version` is the one taken out of service; `to_version` the one that serves now."""

    event: ClassVar[str] = "rolled_back"
    to_version: int | None = Field(default=None, ge=1)
    reason: str = Field(min_length=1)


class ModelDegraded(VersionedPayload):
    """A served version broke an SLO or drifted. `variant` names the optimized variant (INT8, pruned, distilled)
    whose answers broke a quality SLO; empty when the breach is the version's own model's (FP32, or a route
    that named no variant) or the version's as a whole (latency, errors, drift)."""

    event: ClassVar[str] = "degraded"
    kind: Literal["slo", "drift", "quality"]
    variant: str = Field(default="", max_length=128)
    reason: str = Field(min_length=1)
    evidence: dict[str, Any] = Field(default_factory=dict)
    window_seconds: float | None = None

    def of_optimized_variant(self) -> bool:
        """The breach is an optimized variant's (not FP32's, not the version's as a whole): the version's own
        model may still answer well."""
        return self.variant not in ("", FP32_VARIANT)


class ModelOutcome(Payload):
    """Feedback on one inference answer, joined by the gateway to the version that gave that answer.

    `version` and `variant` are the answering backend's as the route names them (the deployer writes the
    registry's version number, as text). `caller` is who was answered, `given_by` who gave the feedback,
    `rows` the rows of the answer. A `label` outcome has `label` (one class per row), `correct` (per row:
    the label is the answer's top class) and `correct_rows` (how many are); a `reward` outcome has `reward`
    alone; a `value` outcome (a regressor's answer) has `value` (the true values, one list per row) and
    `squared_error` (per row: the squared error of the answer's predictions, averaged over its outputs). One
    request gets one outcome: the event id is `outcome.<request_id>`.
    """

    event: ClassVar[str] = "outcome"
    version: str
    variant: str = ""
    request_id: str = Field(pattern=REQUEST_ID_PATTERN)
    caller: str = Field(min_length=1)
    given_by: str = Field(min_length=1)
    answered_at: datetime
    rows: int = Field(ge=1)
    kind: Literal["label", "reward", "value"]
    label: list[int] | None = None
    correct: list[bool] | None = None
    correct_rows: int | None = Field(default=None, ge=0)
    reward: float | None = Field(default=None, allow_inf_nan=False)
    value: list[list[float]] | None = None
    squared_error: list[float] | None = None

    @model_validator(mode="after")
    def _check_kind(self) -> ModelOutcome:
        given = {
            name
            for name in ("label", "correct", "correct_rows", "reward", "value", "squared_error")
            if getattr(self, name) is not None
        }
        needs = _OUTCOME_FIELDS[self.kind]
        if given != needs:
            raise ValueError(f"a {self.kind} outcome has {', '.join(sorted(needs))} and nothing else")
        if (
            self.label is not None
            and self.correct is not None
            and (not len(self.label) == len(self.correct) == self.rows or self.correct_rows != sum(self.correct))
        ):
            raise ValueError("label and correct need one entry per row, and correct_rows their count of true")
        if (
            self.value is not None
            and self.squared_error is not None
            and not len(self.value) == len(self.squared_error) == self.rows
        ):
            raise ValueError("value and squared_error need one entry per row")
        return self


# the fields each kind of outcome carries (and only those)
_OUTCOME_FIELDS = {
    "label": {"label", "correct", "correct_rows"},
    "reward": {"reward"},
    "value": {"value", "squared_error"},
}


class ModelExperimentConcluded(Payload):
    """An online experiment's decision and its evidence. With `outcome` "winner", `winner` took all the
    traffic and the `production` alias and the other arms drain; with "no_difference" nothing moved.

    `effect` and `interval` are the best challenger's difference to the control on `metric` (challenger
    minus control); `p_value` is always-valid (sequential), `samples` the outcomes per version. A bound of
    the interval is None where it is unbounded (no spread in the outcomes yet to bound it with).
    """

    event: ClassVar[str] = "experiment_concluded"
    experiment_id: str = Field(min_length=1)
    outcome: Literal["winner", "no_difference"]
    winner: int | None = Field(default=None, ge=1)
    control: int = Field(ge=1)
    versions: list[int] = Field(min_length=2)
    metric: Literal["accuracy", "reward", "squared_error", "p99", "error_rate"]
    effect: float
    interval: tuple[float | None, float | None]
    p_value: float = Field(ge=0, le=1)
    samples: dict[str, int]
    traffic_moved: bool
    reason: str = Field(min_length=1)

    def version_label(self) -> str:
        return str(self.winner or self.control)


class UsageTally(BaseModel):
    """What one caller's requests to one version cost within a usage report."""

    model_config = ConfigDict(extra="forbid")

    version: str
    caller: str = Field(min_length=1)
    requests: int = Field(ge=0)
    rows: int = Field(ge=0)
    compute_seconds: float = Field(ge=0)


class ModelUsage(Payload):
    """A gateway replica's usage of one model since its previous report (deltas, not totals).

    `replica` is the gateway process (a new id each start) and `sequence` its report number, so the event
    id `usage.<replica>.<sequence>.<model>` is the same when a report is sent again and is stored once.
    `minute` is the UTC minute the report was made in (the period it is filed under).
    """

    event: ClassVar[str] = "usage"
    replica: str = Field(min_length=1, max_length=64)
    sequence: int = Field(ge=0)
    minute: datetime
    tallies: list[UsageTally] = Field(min_length=1)


PAYLOADS: dict[str, type[Payload]] = {
    cls.event: cls
    for cls in (
        ModelTrained,
        ModelValidated,
        ModelRejected,
        ModelOptimized,
        ModelDeployed,
        ModelDeploymentFailed,
        ModelRolledBack,
        ModelDegraded,
        ModelOutcome,
        ModelExperimentConcluded,
        ModelUsage,
    )
}


ANY_PROJECT = "*"


def subject_for(event: str, project: str = ANY_PROJECT) -> str:
    """The NATS subject of `event` in `project`; the default `*` is the filter over every project.

    The project is the last token so that a permission or a filter can hold one project's events
    (`model.*.alpha`) or one event of all of them (`model.trained.*`).
    """
    return f"{SUBJECT_PREFIX}.{event}.{project}"


def event_of_subject(subject: str) -> tuple[str, str] | None:
    """(event, project) of a lifecycle subject `model.<event>.<project>`; None for a subject of another layout."""
    parts = subject.split(".")
    return (parts[1], parts[2]) if len(parts) == 3 and parts[0] == SUBJECT_PREFIX and all(parts) else None


def project_of_subject(subject: str) -> str | None:
    """The project token of a lifecycle subject, or None for a subject of another layout."""
    parts = subject.split(".")
    return parts[2] if len(parts) == 3 and parts[0] == SUBJECT_PREFIX else None


def type_for(event: str) -> str:
    return f"{TYPE_PREFIX}.{event}.v1"


P = TypeVar("P", bound=Payload)


class CloudEvent(BaseModel, Generic[P]):
    """A CloudEvents 1.0 event in structured JSON mode, with the W3C trace context as extensions."""

    model_config = ConfigDict(extra="allow")

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=1)
    source: str = Field(min_length=1)
    type: str
    subject: str
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    datacontenttype: Literal["application/json"] = "application/json"
    traceparent: str | None = None
    tracestate: str | None = None
    data: P

    @property
    def event(self) -> str:
        return self.type.removeprefix(TYPE_PREFIX + ".").removesuffix(".v1")

    @property
    def nats_subject(self) -> str:
        return subject_for(self.event, self.data.project)

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", exclude_none=True))


class InvalidEvent(ValueError):
    """Bytes that are not a valid lifecycle event; the message says why."""


def make_event(payload: P, source: str, *, event_id: str | None = None) -> CloudEvent[P]:
    """Wrap a payload in its envelope; the id defaults to a new UUID."""
    fields: dict[str, Any] = {
        "source": source,
        "type": type_for(payload.event),
        "subject": f"{payload.model}/{payload.version_label()}",
        "data": payload,
    }
    if event_id:
        fields["id"] = event_id
    envelope: Any = CloudEvent[type(payload)]  # type: ignore[misc]
    return envelope(**fields)  # type: ignore[no-any-return]


def parse_event(raw: bytes | str) -> CloudEvent[Any]:
    """Parse and validate an event; raise InvalidEvent with a one-line reason."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidEvent("event must be a JSON object")
    etype = doc.get("type")
    name = etype.removeprefix(TYPE_PREFIX + ".").removesuffix(".v1") if isinstance(etype, str) else None
    payload_cls = PAYLOADS.get(name or "")
    if payload_cls is None or etype != type_for(name or ""):
        raise InvalidEvent(f"unknown event type {etype!r}")
    try:
        return CloudEvent[payload_cls](**doc)  # type: ignore[valid-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'event'}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise InvalidEvent(f"invalid {name} event: {problems}") from None


def json_schemas() -> dict[str, Any]:
    """The JSON Schema of every event, envelope included, keyed by CloudEvent type."""
    return {type_for(name): CloudEvent[cls].model_json_schema() for name, cls in PAYLOADS.items()}  # type: ignore[valid-type]
