"""A model-server deployment's state read from its API objects (JSON dicts): rollout, failures, pending GPUs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from .base import DeploymentStatus, ReplicaStatus, RuntimeState
from .manifests import (
    ACCELERATOR_LABEL,
    FALLBACK_ANNOTATION,
    INSTANCE_LABEL,
    PORT,
    KubernetesOptions,
    grpc_address,
    service_url,
)

Progress = Literal["complete", "progressing", "failed"]
Obj = dict[str, Any]

# Waiting reasons after which a pod does not become ready without someone changing something.
FATAL_WAITING = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


@dataclass(frozen=True)
class FallbackDue:
    """GPU pods that cannot be scheduled: for how long, why, and how long until the fallback."""

    elapsed_s: float
    seconds_left: float
    message: str


def name_of(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


def labels_of(obj: Obj) -> dict[str, str]:
    return obj["metadata"].get("labels") or {}


def annotations_of(obj: Obj) -> dict[str, str]:
    return obj["metadata"].get("annotations") or {}


def desired_replicas(deployment: Obj) -> int:
    replicas = deployment.get("spec", {}).get("replicas")
    return 1 if replicas is None else int(replicas)


def ready_replicas(deployment: Obj) -> int:
    return int((deployment.get("status") or {}).get("readyReplicas") or 0)


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def rollout(deployment: Obj) -> tuple[Progress, str]:
    """Whether the Deployment's rollout is complete, still going, or failed, with a line saying where it is.

    Complete means the controller saw the current generation and every desired replica is updated
    and ready with no old replica left, as `kubectl rollout status` decides.
    """
    status = deployment.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return "failed", f"rollout exceeded its progress deadline: {condition.get('message') or 'no message'}"
    generation = deployment["metadata"].get("generation") or 0
    if (status.get("observedGeneration") or 0) < generation:
        return "progressing", f"waiting for the controller to observe generation {generation}"
    desired = desired_replicas(deployment)
    updated, ready, total = (status.get(k) or 0 for k in ("updatedReplicas", "readyReplicas", "replicas"))
    if desired == 0:
        return ("complete", "scaled to zero") if total == 0 else ("progressing", f"{total} replicas terminating")
    if updated < desired:
        return "progressing", f"{updated} of {desired} replicas updated"
    if total > updated:
        return "progressing", f"{total - updated} old replicas terminating"
    if ready < desired:
        return "progressing", f"{ready} of {desired} replicas ready"
    return "complete", f"{ready} of {desired} replicas ready"


def _condition(pod: Obj, kind: str) -> Obj | None:
    return next((c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == kind), None)


def _unschedulable_since(pod: Obj) -> tuple[datetime, str] | None:
    scheduled = _condition(pod, "PodScheduled")
    if scheduled is None or scheduled.get("status") != "False" or scheduled.get("reason") != "Unschedulable":
        return None
    since = _time(scheduled.get("lastTransitionTime") or pod["metadata"].get("creationTimestamp"))
    return (since, scheduled.get("message") or "no message from the scheduler") if since else None


def _waiting(pod: Obj) -> tuple[str, str, str] | None:
    """(reason, message, last exit) of the first waiting container."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            last = (container.get("lastState") or {}).get("terminated")
            exit_note = f" (last exit code {last.get('exitCode')}: {last.get('reason') or 'no reason'})" if last else ""
            return waiting["reason"], waiting.get("message") or "", exit_note
    return None


def replica_status(pod: Obj) -> ReplicaStatus:
    """One pod as a replica: its URL, readiness, restarts and what keeps it from serving."""
    ready_condition = _condition(pod, "Ready")
    status = pod.get("status") or {}
    detail = ""
    pending, waiting = _unschedulable_since(pod), _waiting(pod)
    if pending:
        detail = f"Unschedulable: {pending[1]}"
    elif waiting:
        reason, message, exit_note = waiting
        detail = f"{reason}: {message}{exit_note}" if message else f"{reason}{exit_note}"
    pod_ip = status.get("podIP")
    return ReplicaStatus(
        name=name_of(pod),
        url=f"http://{pod_ip}:{PORT}" if pod_ip else None,
        ready=bool(ready_condition and ready_condition.get("status") == "True"),
        restarts=sum(int(s.get("restartCount") or 0) for s in status.get("containerStatuses") or []),
        detail=detail,
    )


def waiting_failures(pods: list[Obj]) -> list[str]:
    """`<pod>: <reason>: <message>` for every pod stuck in a reason it will not leave by itself."""
    failures = []
    for pod in pods:
        waiting = _waiting(pod)
        if waiting and waiting[0] in FATAL_WAITING:
            reason, message, exit_note = waiting
            failures.append(f"{name_of(pod)}: {reason}" + (f": {message}" if message else "") + exit_note)
    return failures


def unschedulable_summary(pods: list[Obj], now: datetime) -> str:
    """One line on the pods the scheduler cannot place, or '' when there are none."""
    pending = [p for p in (_unschedulable_since(pod) for pod in pods) if p]
    if not pending:
        return ""
    since, message = min(pending, key=lambda p: p[0])
    return f"{len(pending)} pod(s) unschedulable for {int((now - since).total_seconds())} s: {message}"


def fallback_due(deployment: Obj, pods: list[Obj], timeout_s: float, now: datetime) -> FallbackDue | None:
    """For a GPU Deployment with no ready replica and unschedulable pods: how long until the CPU fallback.

    None when the Deployment is not a GPU one, wants no replicas, has a ready replica (a partial
    GPU deployment still serves) or has no unschedulable pod.
    """
    template_labels = deployment["spec"]["template"].get("metadata", {}).get("labels") or {}
    if template_labels.get(ACCELERATOR_LABEL) != "gpu" or desired_replicas(deployment) == 0:
        return None
    if ready_replicas(deployment):
        return None
    own = [p for p in pods if labels_of(p).get(INSTANCE_LABEL) == name_of(deployment)]
    pending = [p for p in (_unschedulable_since(pod) for pod in own) if p]
    if not pending:
        return None
    since, message = min(pending, key=lambda p: p[0])
    elapsed = max((now - since).total_seconds(), 0.0)
    return FallbackDue(elapsed_s=elapsed, seconds_left=timeout_s - elapsed, message=message)


@dataclass(frozen=True)
class Snapshot:
    """A deployment's objects as read together: its GPU/primary Deployment, the CPU fallback, the pods."""

    primary: Obj
    fallback: Obj | None
    pods: list[Obj]
    resource_version: str | None

    @property
    def serving(self) -> Obj:
        return self.fallback or self.primary

    @property
    def gpu_retry_pending(self) -> bool:
        """A fallback serves while the primary asks for replicas again: not settled yet."""
        return self.fallback is not None and desired_replicas(self.primary) > 0


def deployment_status(snap: Snapshot, options: KubernetesOptions, now: datetime) -> DeploymentStatus:
    """Where a deployment stands, from its Deployments and pods as read together."""
    serving = snap.serving
    name, desired, ready = name_of(serving), desired_replicas(serving), ready_replicas(serving)
    serving_pods = [p for p in snap.pods if labels_of(p).get(INSTANCE_LABEL) == name]
    progress, detail = rollout(serving)
    failures = waiting_failures(serving_pods)
    unschedulable = unschedulable_summary(serving_pods, now)
    if progress == "failed":
        state = RuntimeState.failed
    elif desired == 0 and progress == "complete":
        state, detail = RuntimeState.scaled_to_zero, "scaled to zero"
    elif progress == "complete":
        state = RuntimeState.ready
    elif failures and ready == 0:
        state, detail = RuntimeState.failed, failures[0]
    elif (failures or unschedulable) and ready > 0:
        state, detail = RuntimeState.degraded, (failures or [unschedulable])[0]
    else:
        state = RuntimeState.starting
        detail = f"{detail}; {unschedulable}" if unschedulable else detail
    fallback = annotations_of(snap.fallback).get(FALLBACK_ANNOTATION) if snap.fallback else None
    return DeploymentStatus(
        deployment_id=name_of(snap.primary),
        state=state,
        desired=desired,
        ready=ready,
        endpoints=(service_url(name_of(snap.primary), options),),
        grpc_endpoints={service_url(name_of(snap.primary), options): grpc_address(name_of(snap.primary), options)},
        replicas=tuple(replica_status(p) for p in sorted(snap.pods, key=name_of)),
        detail=detail,
        fallback=fallback,
    )
