"""Kubernetes manifests for one model-server deployment, built as plain dicts by pure functions.

Per `ServerSpec` there are four objects, all named after `spec.deployment_id`: a Deployment, a
ClusterIP Service on port 8500, an autoscaling/v2 HorizontalPodAutoscaler and a policy/v1
PodDisruptionBudget. When GPU pods cannot be scheduled the runtime adds a CPU Deployment named
`fallback_name(id)`; the Service and the PodDisruptionBudget select pods by
`modelgallery.io/deployment`, so they cover whichever Deployment serves.

Every model server connects to NATS as user `modelserver` with that user's password only, taken by
key from the options' `nats_secret`; the settings a spec carries cannot change that identity.

The PodDisruptionBudget uses `maxUnavailable: 1` whatever the replica count: a node drain can
always make progress one pod at a time, it stays correct when the HPA or a manual scale changes the
count (a fixed `minAvailable` equal to the replicas would block every drain), and it allows
scale to zero.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

from ..modelserver.providers import prefers_openvino
from .base import ServerSpec
from .kubernetes_options import GPU_RESOURCE, KubernetesOptions, check_spec, cpu_millis

PORT = 8500
GRPC_PORT = 8501  # OIP v2 over gRPC, beside REST
CONTAINER = "modelserver"
APP_NAME = "modelserver"
SPEC_ANNOTATION = "modelgallery.io/server-spec"
FALLBACK_ANNOTATION = "modelgallery.io/fallback"
DEPLOYMENT_LABEL = "modelgallery.io/deployment"
INSTANCE_LABEL = "app.kubernetes.io/instance"
ACCELERATOR_LABEL = "modelgallery.io/accelerator"
RPS_METRIC = "modelgallery_inference_requests_per_second"
NATS_USER = "modelserver"
NATS_TLS_VOLUME = "nats-tls-ca"
NATS_TLS_DIR = "/etc/modelgallery/nats-tls"
_LABEL_BAD = re.compile(r"[^A-Za-z0-9._-]+")


def fallback_name(deployment_id: str) -> str:
    """The CPU fallback Deployment's name, `<id>-cpu`, kept within a 63-character label."""
    return f"{deployment_id[:59].rstrip('-')}-cpu"


def service_url(deployment_id: str, options: KubernetesOptions) -> str:
    """The in-cluster base URL of a deployment's Service."""
    return f"http://{deployment_id}.{options.namespace}.svc.{options.cluster_domain}:{PORT}"


def grpc_address(deployment_id: str, options: KubernetesOptions) -> str:
    """The in-cluster host:port of a deployment's Service's gRPC port."""
    return f"{deployment_id}.{options.namespace}.svc.{options.cluster_domain}:{GRPC_PORT}"


def label_value(value: object) -> str:
    """Any value as a valid label value: allowed characters only, at most 63, alphanumeric at both ends."""
    cleaned = _LABEL_BAD.sub("-", str(value))[:63]
    return cleaned.strip("-_.")


def selector(deployment_id: str) -> dict[str, str]:
    """Labels that select every pod of a deployment, GPU or CPU fallback."""
    return {"app.kubernetes.io/name": APP_NAME, DEPLOYMENT_LABEL: deployment_id}


def spec_annotation(spec: ServerSpec) -> str:
    """The spec as JSON, stored on the Deployment so a restarted deployer can rebuild the fallback."""
    return json.dumps(dataclasses.asdict(spec), sort_keys=True, separators=(",", ":"))


def spec_from_annotation(raw: str) -> ServerSpec:
    """The inverse of `spec_annotation`."""
    return ServerSpec(**json.loads(raw))


def _labels(spec: ServerSpec, instance: str, gpu: bool) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": APP_NAME,
        INSTANCE_LABEL: instance,
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/part-of": "modelgallery",
        "app.kubernetes.io/managed-by": "modelgallery-deployer",
        "modelgallery.io/model": label_value(spec.model),
        "modelgallery.io/version": label_value(spec.version),
        "modelgallery.io/variant": label_value(spec.variant),
        DEPLOYMENT_LABEL: spec.deployment_id,
        ACCELERATOR_LABEL: "gpu" if gpu else "cpu",
    }


def _metadata(name: str, options: KubernetesOptions, labels: dict[str, str], **annotations: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": options.namespace, "labels": labels}
    if annotations:
        meta["annotations"] = annotations
    return meta


def _args(spec: ServerSpec, options: KubernetesOptions) -> list[str]:
    # ONNX Runtime's default thread count is the node's core count, not the pod's CPU share:
    # with a limit of 1 CPU on a 64-core node it would be throttled into the ground.
    threads = spec.intra_op_threads or max(1, math.ceil(cpu_millis(spec.cpu) / 1000))
    return [
        "--model", spec.model,
        "--version", str(spec.version),
        "--variant", spec.variant,
        "--artifact", spec.artifact_uri,
        "--sha256", spec.artifact_sha256,
        "--port", str(PORT),
        "--grpc-port", str(GRPC_PORT),
        "--max-batch-size", str(spec.max_batch_size),
        "--max-queue-delay-ms", f"{spec.max_queue_delay_ms:g}",
        "--intra-op-threads", str(threads),
        "--nats" if options.serve_nats else "--no-nats",
    ]  # fmt: skip


def _nats_env(options: KubernetesOptions) -> list[dict[str, Any]]:
    """The model server's NATS identity: user `modelserver`, its password by key, and the CA bundle."""
    env: list[dict[str, Any]] = []
    if options.nats_secret:
        env.append({"name": "GALLERY_NATS_USER", "value": NATS_USER})
        env.append(
            {
                "name": "GALLERY_NATS_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": options.nats_secret, "key": NATS_USER}},
            }
        )
    if options.nats_tls_ca_secret:
        env.append({"name": "GALLERY_NATS_TLS_CA", "value": f"{NATS_TLS_DIR}/ca.crt"})
    return env


def _env(spec: ServerSpec, options: KubernetesOptions) -> list[dict[str, Any]]:
    values = {
        # The root filesystem is read-only; everything the server writes goes to the /tmp emptyDir.
        "GALLERY_HOME": "/tmp/gallery",
        "GALLERY_HOST": "0.0.0.0",
        "GALLERY_SERVICE_NAME": "modelserver",
        **spec.env,
        **spec.provider_env(),
    }
    nats = _nats_env(options)
    # the runtime's NATS settings win over a spec's: a deploy request cannot pick another NATS user
    owned = {e["name"] for e in nats}
    return [{"name": k, "value": v} for k, v in sorted(values.items()) if k not in owned] + nats


def _probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http", "scheme": "HTTP"},
        "periodSeconds": period_s,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _image(spec: ServerSpec, options: KubernetesOptions, gpu: bool) -> str:
    """GPU pods run the CUDA/TensorRT image; CPU pods (a GPU deployment's fallback too) whose policy prefers
    OpenVINO run the OpenVINO image, the rest the plain one."""
    if gpu:
        return options.gpu_image
    return options.openvino_image if prefers_openvino(spec.execution_providers) else options.image


def _container(spec: ServerSpec, options: KubernetesOptions, gpu: bool) -> dict[str, Any]:
    resources: dict[str, Any] = {
        "requests": {"cpu": spec.cpu, "memory": spec.memory},
        "limits": {"cpu": spec.cpu, "memory": spec.memory},
    }
    if gpu:
        resources["limits"][GPU_RESOURCE] = "1"
    env_from = []
    if options.config_map:
        env_from.append({"configMapRef": {"name": options.config_map}})
    if options.secret:
        env_from.append({"secretRef": {"name": options.secret}})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": _image(spec, options, gpu),
        "imagePullPolicy": options.image_pull_policy,
        "command": ["python", "-m", "gallery_deployer.modelserver"],
        "args": _args(spec, options),
        "ports": [
            {"name": "http", "containerPort": PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
        ],
        "env": _env(spec, options),
        "resources": resources,
        # The server listens only once its model is loaded and warm; until then only this probe runs.
        "startupProbe": _probe("/v2/health/live", 5, math.ceil(options.startup_timeout_s / 5)),
        "readinessProbe": _probe("/v2/health/ready", 5, 2),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        # Endpoints controllers and proxies need a moment to stop routing here before SIGTERM drains.
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if options.nats_tls_ca_secret:
        container["volumeMounts"].append({"name": NATS_TLS_VOLUME, "mountPath": NATS_TLS_DIR, "readOnly": True})
    if env_from:
        container["envFrom"] = env_from
    return container


def _deployment(
    spec: ServerSpec,
    options: KubernetesOptions,
    *,
    name: str,
    gpu: bool,
    replicas: int,
    hints: dict[str, Any] | None,
    extra_annotations: dict[str, str],
) -> dict[str, Any]:
    check_spec(spec)
    labels = _labels(spec, name, gpu)
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": options.termination_grace_period_s,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {INSTANCE_LABEL: name}},
            }
        ],
        "containers": [_container(spec, options, gpu)],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": options.tmp_size_limit}}],
    }
    if options.nats_tls_ca_secret:
        # only the CA certificate: a Secret made by cert-manager also holds the server's private key
        pod["volumes"].append(
            {
                "name": NATS_TLS_VOLUME,
                "secret": {"secretName": options.nats_tls_ca_secret, "items": [{"key": "ca.crt", "path": "ca.crt"}]},
            }
        )
    if options.service_account:
        pod["serviceAccountName"] = options.service_account
    annotations = {SPEC_ANNOTATION: spec_annotation(spec), **extra_annotations}
    if gpu:
        if options.gpu_node_selector:
            pod["nodeSelector"] = dict(options.gpu_node_selector)
        if options.gpu_tolerations:
            pod["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in options.gpu_tolerations]
        if hints:
            pod["affinity"] = hints["affinity"]
            annotations.update(hints["annotations"])
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name, options, labels, **annotations),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": options.rollout_timeout_s,
            "selector": {"matchLabels": {"app.kubernetes.io/name": APP_NAME, INSTANCE_LABEL: name}},
            # No replica goes away before its successor is ready: a rollout drops no request.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod,
            },
        },
    }


def deployment_manifest(
    spec: ServerSpec, options: KubernetesOptions, hints: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The Deployment named `spec.deployment_id`; GPU pods when `spec.gpu`, with `hints` from the placement plan."""
    return _deployment(
        spec, options, name=spec.deployment_id, gpu=spec.gpu, replicas=spec.replicas, hints=hints, extra_annotations={}
    )


def cpu_fallback_manifest(
    spec: ServerSpec, options: KubernetesOptions, reason: str, replicas: int | None = None
) -> dict[str, Any]:
    """The CPU Deployment `<id>-cpu` serving the same model when GPU pods cannot be scheduled."""
    return _deployment(
        spec,
        options,
        name=fallback_name(spec.deployment_id),
        gpu=False,
        replicas=spec.replicas if replicas is None else replicas,
        hints=None,
        extra_annotations={FALLBACK_ANNOTATION: reason},
    )


def service_manifest(spec: ServerSpec, options: KubernetesOptions) -> dict[str, Any]:
    """A ClusterIP Service on ports 8500 (REST) and 8501 (gRPC) selecting every pod of the deployment (GPU or
    CPU fallback)."""
    check_spec(spec)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec.deployment_id, options, _labels(spec, spec.deployment_id, spec.gpu)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(spec.deployment_id),
            "ports": [
                {"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"},
                {
                    "name": "grpc",
                    "port": GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "kubernetes.io/h2c",
                },
            ],
        },
    }


def _quantity(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{round(value * 1000)}m"


def autoscaler_manifest(spec: ServerSpec, options: KubernetesOptions, target: str | None = None) -> dict[str, Any]:
    """An autoscaling/v2 HPA on the serving Deployment (`target`, default the primary).

    The bounds are [min_replicas, max(max_replicas, spec.replicas)]. A Deployment scaled to 0
    is left alone by the HPA until it is scaled up again.
    """
    check_spec(spec)
    if options.autoscale_metric == "cpu":
        metric: dict[str, Any] = {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": options.target_cpu_utilization},
            },
        }
    else:
        metric = {
            "type": "Pods",
            "pods": {
                "metric": {"name": RPS_METRIC},
                "target": {"type": "AverageValue", "averageValue": _quantity(options.target_requests_per_second)},
            },
        }
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(spec.deployment_id, options, _labels(spec, spec.deployment_id, spec.gpu)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target or spec.deployment_id},
            "minReplicas": options.min_replicas,
            "maxReplicas": max(options.max_replicas, spec.replicas, options.min_replicas),
            "metrics": [metric],
        },
    }


def disruption_budget_manifest(spec: ServerSpec, options: KubernetesOptions) -> dict[str, Any]:
    """A policy/v1 PodDisruptionBudget: at most one of the deployment's pods evicted at a time."""
    check_spec(spec)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(spec.deployment_id, options, _labels(spec, spec.deployment_id, spec.gpu)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector(spec.deployment_id)},
            # A crash-looping pod must not block a node drain.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def manifests_for(
    spec: ServerSpec, options: KubernetesOptions, hints: dict[str, Any] | None = None, hpa_target: str | None = None
) -> list[dict[str, Any]]:
    """The four objects of one deployment, in the order they are applied."""
    return [
        deployment_manifest(spec, options, hints),
        service_manifest(spec, options),
        autoscaler_manifest(spec, options, hpa_target),
        disruption_budget_manifest(spec, options),
    ]
