"""Object shapes the fake Kubernetes API produces: Status errors, selectors, merge patch, pods, rollouts."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import yaml

INSTANCE_LABEL = "app.kubernetes.io/instance"


def timestamp(when: datetime | None = None) -> str:
    """A Kubernetes timestamp (RFC 3339, whole seconds, UTC)."""
    return (when or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, status: str, reason: str, message: str | None = None) -> dict[str, Any]:
    condition = {"type": kind, "status": status, "reason": reason, "lastUpdateTime": timestamp()}
    condition["lastTransitionTime"] = timestamp()
    if message:
        condition["message"] = message
    return condition


def rollout_status(dep: dict[str, Any], *, ready: bool) -> dict[str, Any]:
    """The status the Deployment controller writes once every desired pod exists, ready or not."""
    desired = dep["spec"].get("replicas", 1)
    if desired == 0:
        return {"observedGeneration": dep["metadata"]["generation"]}
    return {
        "observedGeneration": dep["metadata"]["generation"],
        "replicas": desired,
        "updatedReplicas": desired,
        "readyReplicas": desired if ready else 0,
        "availableReplicas": desired if ready else 0,
        "unavailableReplicas": 0 if ready else desired,
        "conditions": [
            _condition("Available", "True", "MinimumReplicasAvailable")
            if ready
            else _condition("Available", "False", "MinimumReplicasUnavailable"),
            _condition("Progressing", "True", "NewReplicaSetAvailable" if ready else "ReplicaSetUpdated"),
        ],
    }


def deadline_exceeded_status(dep: dict[str, Any]) -> dict[str, Any]:
    """The controller's verdict when a rollout made no progress within progressDeadlineSeconds."""
    name = dep["metadata"]["name"]
    message = f'ReplicaSet "{name}-7d9f" has timed out progressing.'
    return {
        "observedGeneration": dep["metadata"]["generation"],
        "conditions": [_condition("Progressing", "False", "ProgressDeadlineExceeded", message)],
    }


def pod_of(
    dep: dict[str, Any],
    index: int,
    *,
    ready: bool,
    unschedulable: tuple[str, datetime] | None = None,
    crash_restarts: int = 0,
) -> dict[str, Any]:
    """Pod `index` of a Deployment: running (ready or not), crash-looping, or pending unschedulable."""
    name = f"{dep['metadata']['name']}-7d9f-{index}"
    template = dep["spec"]["template"]
    status: dict[str, Any]
    if unschedulable:
        message, since = unschedulable
        scheduled = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
        status = {"phase": "Pending", "conditions": [{**scheduled, "lastTransitionTime": timestamp(since)}]}
    else:
        spec = template["spec"]["containers"][0]
        container: dict[str, Any] = {
            "name": spec["name"],
            "image": spec["image"],
            "imageID": "",
            "ready": ready,
            "restartCount": crash_restarts,
            "started": ready,
            "state": {"running": {"startedAt": timestamp()}},
        }
        if crash_restarts:
            back_off = f"back-off 1m20s restarting failed container={spec['name']} pod={name}"
            container["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": back_off}}
            exited = {"exitCode": 1, "reason": "Error", "startedAt": timestamp(), "finishedAt": timestamp()}
            container["lastState"] = {"terminated": exited}
        status = {
            "phase": "Running",
            "podIP": f"10.0.0.{10 + index}",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": timestamp()},
                {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": timestamp()},
            ],
            "containerStatuses": [container],
        }
    metadata = {"name": name, "namespace": dep["metadata"]["namespace"], "labels": dict(template["metadata"]["labels"])}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": copy.deepcopy(template["spec"]),
        "status": status,
    }


def status_body(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A `Status` object as the API server returns it for errors."""
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def matches_labels(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def matches_fields(obj: dict[str, Any], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, value = term.split("=", 1)
        if key == "metadata.name" and obj["metadata"]["name"] != value:
            return False
        if key == "metadata.namespace" and obj["metadata"]["namespace"] != value:
            return False
    return True


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake saw it."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.body = status_body(code, reason, message, details)


def decode_body(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    return yaml.safe_load(raw) if content_type.endswith("yaml") else json.loads(raw)


_MICRO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")


def check_lease(lease: dict[str, Any]) -> None:
    """What the API server refuses in a Lease: a MicroTime it cannot parse (400), a spec out of range (422)."""
    spec = lease.get("spec") or {}
    name = lease.get("metadata", {}).get("name", "")
    for field in ("acquireTime", "renewTime"):
        value = spec.get(field)
        if value is not None and not (isinstance(value, str) and _MICRO_TIME.match(value)):
            raise ApiError(400, "BadRequest", f'parsing time "{value}" as RFC3339 failed (spec.{field})')
    problems = []
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and (not isinstance(duration, int) or duration <= 0):
        problems.append(f"spec.leaseDurationSeconds: Invalid value: {duration}: must be greater than 0")
    transitions = spec.get("leaseTransitions")
    if transitions is not None and (not isinstance(transitions, int) or transitions < 0):
        problems.append(f"spec.leaseTransitions: Invalid value: {transitions}: must be greater than or equal to 0")
    if problems:
        raise ApiError(422, "Invalid", f'Lease.coordination.k8s.io "{name}" is invalid: ' + ", ".join(problems))
