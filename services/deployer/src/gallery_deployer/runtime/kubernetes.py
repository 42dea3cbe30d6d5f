"""The Kubernetes runtime: model servers as Deployments, applied server-side with the official client.

Every blocking client call runs in a worker thread. `wait_ready` is where the GPU → CPU fallback
happens: when a GPU Deployment has no ready pod and its pods have been unschedulable for longer than
`gpu_fallback_timeout_s`, a CPU Deployment `<id>-cpu` of the same spec takes over (the Service
selects both), the HPA follows it and the GPU Deployment is scaled to 0. The next `apply` tries the
GPU again; once a GPU rollout completes, `wait_ready` removes the CPU Deployment.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from gallery_common.errors import Conflict, InvalidRequest, NotFound
from gallery_common.kube_api import api_error, call, default_api_client
from gallery_common.telemetry import get_logger

from .base import DeploymentStatus, RuntimeState, ServerSpec
from .kubernetes_status import (
    Obj,
    Snapshot,
    annotations_of,
    deployment_status,
    desired_replicas,
    fallback_due,
    name_of,
    rollout,
)
from .manifests import (
    DEPLOYMENT_LABEL,
    FALLBACK_ANNOTATION,
    SPEC_ANNOTATION,
    KubernetesOptions,
    autoscaler_manifest,
    check_spec,
    cpu_fallback_manifest,
    deployment_manifest,
    disruption_budget_manifest,
    fallback_name,
    service_manifest,
    spec_from_annotation,
)
from .node_hardware import NodeHardware, nodes_hardware
from .placement import Placement, scheduling_hints

log = get_logger(__name__)
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"


class KubernetesRuntime:
    """`base.Runtime` on a Kubernetes cluster; see the module docstring for the fallback.

    `api_client` defaults to the in-cluster service account, else the local kubeconfig.
    `set_placement` supplies a GPU plan whose scheduling hints go on GPU Deployments.
    """

    name = "kubernetes"

    def __init__(self, options: KubernetesOptions | None = None, api_client: client.ApiClient | None = None) -> None:
        self.options = options or KubernetesOptions()
        self._owns_client = api_client is None
        self._client = api_client or default_api_client()
        self._apps = client.AppsV1Api(self._client)
        self._core = client.CoreV1Api(self._client)
        self._autoscaling = client.AutoscalingV2Api(self._client)
        self._policy = client.PolicyV1Api(self._client)
        self._placement: Placement | None = None

    def set_placement(self, placement: Placement | None) -> None:
        """Use `placement`'s hints (preferred nodes, the plan as an annotation) on the next GPU applies."""
        self._placement = placement

    async def apply(self, spec: ServerSpec) -> DeploymentStatus:
        """Server-side apply the Deployment, Service, HPA and PodDisruptionBudget of `spec`."""
        check_spec(spec)
        current = await self._snapshot_or_none(spec.deployment_id)
        fallback = current.fallback if current else None
        hints = scheduling_hints(self._placement, spec.deployment_id) if spec.gpu and self._placement else None
        hpa_target = fallback_name(spec.deployment_id) if fallback is not None and spec.gpu else None
        objects = [
            deployment_manifest(spec, self.options, hints),
            service_manifest(spec, self.options),
            autoscaler_manifest(spec, self.options, hpa_target),
            disruption_budget_manifest(spec, self.options),
        ]
        if fallback is not None and spec.gpu:
            # The CPU fallback keeps serving, now with the new spec, while the GPU is tried again.
            reason = annotations_of(fallback).get(FALLBACK_ANNOTATION, "")
            objects.append(cpu_fallback_manifest(spec, self.options, reason))
        for manifest in objects:
            await self._apply(manifest)
        log.info("k8s_applied", deployment=spec.deployment_id, replicas=spec.replicas, gpu=spec.gpu)
        return await self.status(spec.deployment_id)

    async def wait_ready(self, deployment_id: str, timeout_s: float) -> DeploymentStatus:
        """Watch until the rollout completes, fails, or `timeout_s` passes; falls back to CPU on the way.

        Give it more than `gpu_fallback_timeout_s` for a GPU deployment, so the fallback has time to start.
        """
        deadline = anyio.current_time() + timeout_s
        while True:
            snap = await self._snapshot(deployment_id)
            if await self._settle_fallback(snap):
                if anyio.current_time() < deadline:
                    continue
                return await self.status(deployment_id)
            status = deployment_status(snap, self.options, _now())
            remaining = deadline - anyio.current_time()
            terminal = status.state in (RuntimeState.ready, RuntimeState.failed, RuntimeState.scaled_to_zero)
            if (terminal and not snap.gpu_retry_pending) or remaining <= 0:
                return status
            pause = min(remaining, self.options.status_poll_s)
            due = fallback_due(snap.primary, snap.pods, self.options.gpu_fallback_timeout_s, _now())
            if due is not None:
                pause = min(pause, max(due.seconds_left, 0.05))
            await self._wait_for_change(deployment_id, snap.resource_version, pause)

    async def status(self, deployment_id: str) -> DeploymentStatus:
        """The deployment now (read only); NotFound when it does not exist."""
        return deployment_status(await self._snapshot(deployment_id), self.options, _now())

    async def scale(self, deployment_id: str, replicas: int) -> DeploymentStatus:
        """Set the serving Deployment's replicas; above 0 the HPA's floor follows, so it does not undo this."""
        if replicas < 0:
            raise InvalidRequest(f"replicas must not be negative, got {replicas}")
        snap = await self._snapshot(deployment_id)
        target = name_of(snap.serving)
        await self._merge_patch_deployment(target, {"spec": {"replicas": replicas}})
        if replicas > 0:
            await self._raise_hpa_floor(deployment_id, replicas)
        log.info("k8s_scaled", deployment=deployment_id, target=target, replicas=replicas)
        return await self.status(deployment_id)

    async def delete(self, deployment_id: str) -> None:
        """Delete every object of the deployment; objects already gone are skipped."""
        ns, opts = self.options.namespace, {"propagation_policy": "Background"}
        deletions: list[tuple[str, Callable[..., Any], str]] = [
            ("Deployment", self._apps.delete_namespaced_deployment, deployment_id),
            ("Deployment", self._apps.delete_namespaced_deployment, fallback_name(deployment_id)),
            ("Service", self._core.delete_namespaced_service, deployment_id),
            ("HorizontalPodAutoscaler", self._autoscaling.delete_namespaced_horizontal_pod_autoscaler, deployment_id),
            ("PodDisruptionBudget", self._policy.delete_namespaced_pod_disruption_budget, deployment_id),
        ]
        for kind, delete, name in deletions:
            try:
                await self._call(f"deleting {kind} {ns}/{name}", delete, name, ns, **opts)
            except NotFound:
                continue
        log.info("k8s_deleted", deployment=deployment_id)

    async def node_hardware(self, spec: ServerSpec) -> list[NodeHardware]:
        """The schedulable nodes `spec`'s pods may land on (a GPU spec: those matching the GPU node selector)
        with their hardware classes from their labels (`node_hardware.py`)."""
        selector = self.options.gpu_node_selector if spec.gpu else {}
        query = {"label_selector": ",".join(f"{k}={v}" for k, v in selector.items())} if selector else {}
        listed = await self._call("listing nodes", self._core.list_node, **query)
        return nodes_hardware(listed.get("items") or [], gpu=spec.gpu, gpu_node_selector=selector)

    async def close(self) -> None:
        """Close the API client when this runtime created it."""
        if self._owns_client:
            await anyio.to_thread.run_sync(self._client.close)

    async def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Obj:
        """Call the client in a worker thread; the answer as the API's own JSON, errors as GalleryErrors."""
        return await call(what, fn, *args, timeout_s=self.options.request_timeout_s, **kwargs)

    async def _apply(self, manifest: dict[str, Any]) -> None:
        patchers: dict[str, Callable[..., Any]] = {
            "Deployment": self._apps.patch_namespaced_deployment,
            "Service": self._core.patch_namespaced_service,
            "HorizontalPodAutoscaler": self._autoscaling.patch_namespaced_horizontal_pod_autoscaler,
            "PodDisruptionBudget": self._policy.patch_namespaced_pod_disruption_budget,
        }
        meta = manifest["metadata"]
        await self._call(
            f"applying {manifest['kind']} {meta['namespace']}/{meta['name']}",
            patchers[manifest["kind"]],
            meta["name"],
            meta["namespace"],
            manifest,
            field_manager=self.options.field_manager,
            force=True,
            _content_type=APPLY_PATCH,
        )

    async def _merge_patch(self, kind: str, patcher: Callable[..., Any], name: str, patch: dict[str, Any]) -> None:
        ns = self.options.namespace
        await self._call(
            f"patching {kind} {ns}/{name}",
            patcher,
            name,
            ns,
            patch,
            field_manager=self.options.field_manager,
            _content_type=MERGE_PATCH,
        )

    async def _merge_patch_deployment(self, name: str, patch: dict[str, Any]) -> None:
        await self._merge_patch("Deployment", self._apps.patch_namespaced_deployment, name, patch)

    async def _raise_hpa_floor(self, deployment_id: str, replicas: int) -> None:
        ns, autoscaling = self.options.namespace, self._autoscaling
        what = f"reading HorizontalPodAutoscaler {ns}/{deployment_id}"
        try:
            hpa = await self._call(what, autoscaling.read_namespaced_horizontal_pod_autoscaler, deployment_id, ns)
        except NotFound:
            return
        patch = {"spec": {"minReplicas": replicas, "maxReplicas": max(hpa["spec"]["maxReplicas"], replicas)}}
        patcher = autoscaling.patch_namespaced_horizontal_pod_autoscaler
        await self._merge_patch("HorizontalPodAutoscaler", patcher, deployment_id, patch)

    async def _snapshot_or_none(self, deployment_id: str) -> Snapshot | None:
        try:
            return await self._snapshot(deployment_id)
        except NotFound:
            return None

    async def _snapshot(self, deployment_id: str) -> Snapshot:
        ns, selector = self.options.namespace, f"{DEPLOYMENT_LABEL}={deployment_id}"
        listed = await self._call(
            f"listing Deployments of {deployment_id}",
            self._apps.list_namespaced_deployment,
            ns,
            label_selector=selector,
        )
        by_name = {name_of(d): d for d in listed.get("items") or []}
        primary = by_name.get(deployment_id)
        if primary is None:
            raise NotFound(f"no deployment {deployment_id!r} in namespace {ns!r}")
        pods = await self._call(
            f"listing pods of {deployment_id}", self._core.list_namespaced_pod, ns, label_selector=selector
        )
        fallback, rv = by_name.get(fallback_name(deployment_id)), listed.get("metadata", {}).get("resourceVersion")
        return Snapshot(primary, fallback, list(pods.get("items") or []), rv)

    async def _settle_fallback(self, snap: Snapshot) -> bool:
        """Start, renew or retire the CPU fallback as the GPU pods' state asks; True when something changed."""
        primary, deployment_id = snap.primary, name_of(snap.primary)
        wanted = desired_replicas(primary)
        if snap.fallback is not None and wanted > 0 and rollout(primary)[0] == "complete":
            spec = self._spec_of(primary)
            await self._apply(autoscaler_manifest(spec, self.options))
            await self._call(
                f"deleting Deployment {self.options.namespace}/{name_of(snap.fallback)}",
                self._apps.delete_namespaced_deployment,
                name_of(snap.fallback),
                self.options.namespace,
                propagation_policy="Background",
            )
            log.info("k8s_fallback_retired", deployment=deployment_id)
            return True
        due = fallback_due(primary, snap.pods, self.options.gpu_fallback_timeout_s, _now())
        if due is None or due.seconds_left > 0:
            return False
        spec = self._spec_of(primary)
        reason = f"GPU pods unschedulable for {int(due.elapsed_s)} s: {due.message}; serving on CPU"
        await self._apply(cpu_fallback_manifest(spec, self.options, reason, replicas=wanted))
        await self._apply(autoscaler_manifest(spec, self.options, fallback_name(deployment_id)))
        await self._merge_patch_deployment(deployment_id, {"spec": {"replicas": 0}})
        log.warning("k8s_gpu_fallback", deployment=deployment_id, reason=reason)
        return True

    @staticmethod
    def _spec_of(deployment: Obj) -> ServerSpec:
        raw = annotations_of(deployment).get(SPEC_ANNOTATION)
        if not raw:
            raise Conflict(f"Deployment {name_of(deployment)} has no {SPEC_ANNOTATION} annotation")
        return spec_from_annotation(raw)

    async def _wait_for_change(self, deployment_id: str, resource_version: str | None, seconds: float) -> None:
        """Return when one of the deployment's Deployments changes after `resource_version`, or after `seconds`."""
        if not resource_version:  # a watch from nowhere replays every object at once: just wait
            await anyio.sleep(seconds)
            return
        await anyio.to_thread.run_sync(
            functools.partial(self._watch_once, deployment_id, resource_version, seconds), abandon_on_cancel=True
        )

    def _watch_once(self, deployment_id: str, resource_version: str | None, seconds: float) -> None:
        watcher = watch.Watch()
        events = watcher.stream(
            self._apps.list_namespaced_deployment,
            self.options.namespace,
            label_selector=f"{DEPLOYMENT_LABEL}={deployment_id}",
            resource_version=resource_version,
            # The read timeout ends a quiet watch on time; the server's limit is only a backstop.
            timeout_seconds=math.ceil(seconds) + 1,
            _request_timeout=(self.options.request_timeout_s, seconds),
        )
        try:
            for event in events:
                if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    return
        except ApiException as exc:
            if exc.status == 410:  # our resourceVersion is too old: the caller lists again
                return
            raise api_error(f"watching Deployments of {deployment_id}", exc) from None
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            # A quiet, broken or unreadable watch: the caller lists again, and that call reports what is wrong.
            return
        finally:
            events.close()


def _now() -> datetime:
    return datetime.now(UTC)
