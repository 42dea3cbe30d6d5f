"""Kubernetes manifests of a model-server deployment: schema-valid for 1.37, and what a cluster operator sees."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pydantic
import pytest

from gallery_common.errors import InvalidRequest
from gallery_common.settings import load_settings
from gallery_deployer.modelserver.__main__ import parse_args
from gallery_deployer.modelserver.settings import ModelServerSettings
from gallery_deployer.runtime.base import ServerSpec
from gallery_deployer.runtime.manifests import (
    FALLBACK_ANNOTATION,
    SPEC_ANNOTATION,
    KubernetesOptions,
    autoscaler_manifest,
    cpu_fallback_manifest,
    deployment_manifest,
    disruption_budget_manifest,
    fallback_name,
    label_value,
    manifests_for,
    service_manifest,
    spec_from_annotation,
)
from gallery_deployer.runtime.placement import GpuDevice, PlacementRequest, plan_placement, scheduling_hints

SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
K8S_VERSION = "1.37.0"


def cpu_spec(**changes: Any) -> ServerSpec:
    fields: dict[str, Any] = {
        "deployment_id": "digits-v3-fp32",
        "model": "digits",
        "version": 3,
        "variant": "fp32",
        "artifact_uri": "s3://gallery/runs/r1/model.onnx",
        "artifact_sha256": SHA,
        "replicas": 2,
        "cpu": "2500m",
        "memory": "2Gi",
        "env": {"GALLERY_LOG_LEVEL": "DEBUG"},
    }
    return ServerSpec(**(fields | changes))


def gpu_spec() -> ServerSpec:
    return cpu_spec(deployment_id="digits-v3-int8", variant="int8", gpu=True, gpu_memory_mb=3_000)


def gpu_hints(spec: ServerSpec) -> dict[str, Any]:
    plan = plan_placement(
        [PlacementRequest(spec.deployment_id, spec.replicas, spec.gpu_memory_mb)],
        [
            GpuDevice("gpu-node-1", 0, 16_000),
            GpuDevice("gpu-node-2", 0, 16_000, used_mb=14_000),
        ],
    )
    return scheduling_hints(plan, spec.deployment_id)


OPTIONS = KubernetesOptions(config_map="gallery-env", secret="gallery-credentials", service_account="modelserver")
RPS_OPTIONS = OPTIONS.model_copy(update={"autoscale_metric": "requests_per_second", "target_requests_per_second": 2.5})
TLS_OPTIONS = OPTIONS.model_copy(update={"nats_secret": "gallery-nats-users", "nats_tls_ca_secret": "gallery-nats-tls"})

CASES = {
    "cpu": lambda: manifests_for(cpu_spec(), OPTIONS),
    "gpu": lambda: manifests_for(gpu_spec(), OPTIONS, gpu_hints(gpu_spec())),
    "gpu-fallback": lambda: [
        cpu_fallback_manifest(gpu_spec(), OPTIONS, "GPU pods unschedulable for 120 s: no GPU; serving on CPU"),
        autoscaler_manifest(gpu_spec(), OPTIONS, fallback_name("digits-v3-int8")),
    ],
    "custom-metric": lambda: manifests_for(cpu_spec(), RPS_OPTIONS),
    "nats-tls": lambda: manifests_for(gpu_spec(), TLS_OPTIONS, gpu_hints(gpu_spec())),
}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    [only] = deployment["spec"]["template"]["spec"]["containers"]
    return only


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_manifest_is_valid_for_kubernetes_1_37(case: str) -> None:
    manifests = CASES[case]()
    for manifest in manifests:
        assert kubernetes_validate.validate(manifest, K8S_VERSION, strict=True) == "1.37"
        assert manifest["metadata"]["namespace"] == "modelgallery"


def test_the_schema_check_catches_a_misspelt_field() -> None:
    deployment = deployment_manifest(cpu_spec(), OPTIONS)
    container(deployment)["readinesProbe"] = container(deployment).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_container_runs_the_model_server_with_the_artifact_and_its_sha256() -> None:
    spec = cpu_spec()
    server = container(deployment_manifest(spec, OPTIONS))
    assert server["command"] == ["python", "-m", "gallery_deployer.modelserver"]
    # The model server's own parser and settings accept exactly these arguments.
    settings = load_settings(ModelServerSettings, **parse_args(server["args"]))
    assert settings.artifact_uri == "s3://gallery/runs/r1/model.onnx"
    assert settings.artifact_sha256 == SHA
    assert (settings.model_name, settings.model_version, settings.variant) == ("digits", "3", "fp32")
    assert (settings.port, settings.grpc_port) == (8500, 8501)
    assert settings.max_batch_size == 32
    # With intra_op_threads 0 the thread count follows the CPU share (2.5 CPUs → 3), not the node's cores.
    assert settings.intra_op_threads == 3
    assert server["ports"] == [
        {"name": "http", "containerPort": 8500, "protocol": "TCP"},
        {"name": "grpc", "containerPort": 8501, "protocol": "TCP"},
    ]


def test_probes_hit_the_v2_health_endpoints_and_startup_allows_a_slow_load() -> None:
    options = OPTIONS.model_copy(update={"startup_timeout_s": 900})
    server = container(deployment_manifest(cpu_spec(), options))
    assert server["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http", "scheme": "HTTP"}
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = server["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/live"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 900


def test_settings_reach_the_pod_from_the_config_map_the_secret_and_the_spec() -> None:
    deployment = deployment_manifest(cpu_spec(env={"GALLERY_LOG_LEVEL": "DEBUG", "GALLERY_HOST": "::"}), OPTIONS)
    server = container(deployment)
    assert server["envFrom"] == [
        {"configMapRef": {"name": "gallery-env"}},
        {"secretRef": {"name": "gallery-credentials"}},
    ]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in server["env"]}
    assert env["GALLERY_LOG_LEVEL"] == "DEBUG"
    assert env["GALLERY_HOST"] == "::"  # the spec's own value wins, and no name appears twice
    assert len(server["env"]) == len(env)
    assert env["GALLERY_HOME"].startswith("/tmp/")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "modelserver"


def secret_references(deployment: dict[str, Any]) -> list[tuple[str, str | None]]:
    """Every (Secret, key) the pod reads; key None for a whole Secret (envFrom or a volume of all its keys)."""
    pod = deployment["spec"]["template"]["spec"]
    found: list[tuple[str, str | None]] = []
    for c in pod["containers"]:
        found += [(s["secretRef"]["name"], None) for s in c.get("envFrom", []) if "secretRef" in s]
        for e in c.get("env", []):
            if ref := e.get("valueFrom", {}).get("secretKeyRef"):
                found.append((ref["name"], ref["key"]))
    for volume in pod["volumes"]:
        if secret := volume.get("secret"):
            keys = [item["key"] for item in secret.get("items", [])] or [None]
            found += [(secret["secretName"], key) for key in keys]
    return found


def test_a_model_server_connects_to_nats_as_modelserver_with_only_that_password() -> None:
    # A deploy request's settings cannot make a model server another NATS user.
    spec = cpu_spec(env={"GALLERY_NATS_USER": "deployer", "GALLERY_NATS_PASSWORD": "guess"})
    for deployment in (deployment_manifest(spec, OPTIONS), cpu_fallback_manifest(gpu_spec(), OPTIONS, "no GPU")):
        env = container(deployment)["env"]
        assert [e for e in env if e["name"].startswith("GALLERY_NATS_")] == [
            {"name": "GALLERY_NATS_USER", "value": "modelserver"},
            {
                "name": "GALLERY_NATS_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": "modelgallery-nats-users", "key": "modelserver"}},
            },
        ]
        assert ("modelgallery-nats-users", None) not in secret_references(deployment)


def test_without_a_nats_secret_a_model_server_gets_no_nats_credentials() -> None:
    server = container(deployment_manifest(cpu_spec(), OPTIONS.model_copy(update={"nats_secret": None})))
    assert not [e for e in server["env"] if e["name"].startswith("GALLERY_NATS_")]


def test_with_a_nats_ca_the_pod_mounts_only_the_ca_certificate_and_names_it() -> None:
    deployment = deployment_manifest(gpu_spec(), TLS_OPTIONS, gpu_hints(gpu_spec()))
    pod, server = deployment["spec"]["template"]["spec"], container(deployment)
    env = {e["name"]: e for e in server["env"]}
    assert env["GALLERY_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "gallery-nats-users",
        "key": "modelserver",
    }
    ca_file = env["GALLERY_NATS_TLS_CA"]["value"]
    (mount,) = [m for m in server["volumeMounts"] if ca_file.startswith(m["mountPath"] + "/")]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    # the TLS Secret also holds the server's private key: only ca.crt reaches the model server
    assert volume["secret"] == {
        "secretName": "gallery-nats-tls",
        "items": [{"key": "ca.crt", "path": ca_file.removeprefix(mount["mountPath"] + "/")}],
    }
    assert sorted(secret_references(deployment), key=str) == sorted(
        [("gallery-credentials", None), ("gallery-nats-users", "modelserver"), ("gallery-nats-tls", "ca.crt")],
        key=str,
    )


def test_pods_run_as_non_root_on_a_read_only_root_with_a_writable_tmp() -> None:
    deployment = deployment_manifest(cpu_spec(), OPTIONS)
    pod, server = deployment["spec"]["template"]["spec"], container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    assert server["securityContext"]["allowPrivilegeEscalation"] is False
    assert server["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"][0]["emptyDir"] == {"sizeLimit": "1Gi"}
    # The grace period covers the preStop pause and the server's 30 s drain.
    assert pod["terminationGracePeriodSeconds"] >= server["lifecycle"]["preStop"]["sleep"]["seconds"] + 30


def test_a_cpu_deployment_requests_no_gpu() -> None:
    deployment = deployment_manifest(cpu_spec(), OPTIONS)
    pod, server = deployment["spec"]["template"]["spec"], container(deployment)
    assert server["resources"] == {
        "requests": {"cpu": "2500m", "memory": "2Gi"},
        "limits": {"cpu": "2500m", "memory": "2Gi"},
    }
    assert server["image"] == OPTIONS.image
    assert "nodeSelector" not in pod and "tolerations" not in pod and "affinity" not in pod


def test_a_gpu_deployment_requests_one_gpu_on_gpu_nodes_near_the_plan() -> None:
    spec = gpu_spec()
    deployment = deployment_manifest(spec, OPTIONS, gpu_hints(spec))
    pod, server = deployment["spec"]["template"]["spec"], container(deployment)
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert server["image"] == OPTIONS.gpu_image
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    terms = pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert terms[0]["preference"]["matchExpressions"][0]["values"] == ["gpu-node-1"]
    assert deployment["metadata"]["annotations"]["modelgallery.io/gpu-plan"] == (
        '[{"node":"gpu-node-1","gpu":0},{"node":"gpu-node-1","gpu":0}]'
    )


def test_gpu_node_selector_and_tolerations_come_from_the_options() -> None:
    options = KubernetesOptions(
        gpu_node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
        gpu_tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute"}],
    )
    pod = deployment_manifest(gpu_spec(), options)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute"}]


def test_the_cpu_fallback_serves_the_same_model_without_a_gpu_behind_the_same_service() -> None:
    spec = gpu_spec()
    fallback = cpu_fallback_manifest(spec, OPTIONS, "GPU pods unschedulable for 120 s: x; serving on CPU", replicas=3)
    primary = deployment_manifest(spec, OPTIONS)
    server = container(fallback)
    assert fallback["metadata"]["name"] == "digits-v3-int8-cpu"
    assert fallback["spec"]["replicas"] == 3
    assert "nvidia.com/gpu" not in server["resources"]["limits"]
    assert server["image"] == OPTIONS.image
    assert "tolerations" not in fallback["spec"]["template"]["spec"]
    assert parse_args(server["args"])["artifact_sha256"] == SHA
    assert fallback["metadata"]["annotations"][FALLBACK_ANNOTATION].endswith("serving on CPU")

    service = service_manifest(spec, OPTIONS)["spec"]["selector"]
    budget = disruption_budget_manifest(spec, OPTIONS)["spec"]["selector"]["matchLabels"]
    gpu_pods = primary["spec"]["template"]["metadata"]["labels"]
    cpu_pods = fallback["spec"]["template"]["metadata"]["labels"]
    for labels in (gpu_pods, cpu_pods):
        assert selects(service, labels) and selects(budget, labels)
    # Each Deployment owns only its own pods: overlapping selectors would make them fight.
    assert selects(primary["spec"]["selector"]["matchLabels"], gpu_pods)
    assert not selects(primary["spec"]["selector"]["matchLabels"], cpu_pods)
    assert selects(fallback["spec"]["selector"]["matchLabels"], cpu_pods)
    assert not selects(fallback["spec"]["selector"]["matchLabels"], gpu_pods)


def test_labels_name_the_model_version_variant_and_deployment() -> None:
    labels = deployment_manifest(cpu_spec(), OPTIONS)["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "modelserver"
    assert labels["modelgallery.io/model"] == "digits"
    assert labels["modelgallery.io/version"] == "3"
    assert labels["modelgallery.io/variant"] == "fp32"
    assert labels["modelgallery.io/deployment"] == "digits-v3-fp32"


def test_the_deployment_carries_its_spec_for_a_restarted_deployer() -> None:
    spec = gpu_spec()
    annotation = deployment_manifest(spec, OPTIONS)["metadata"]["annotations"][SPEC_ANNOTATION]
    assert spec_from_annotation(annotation) == spec


def test_rollouts_keep_every_replica_until_its_successor_is_ready() -> None:
    deployment = deployment_manifest(cpu_spec(), OPTIONS.model_copy(update={"rollout_timeout_s": 300}))
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert deployment["spec"]["progressDeadlineSeconds"] == 300


def test_the_autoscaler_scales_on_cpu_or_on_requests_per_second() -> None:
    spec = cpu_spec(replicas=6)
    on_cpu = autoscaler_manifest(spec, OPTIONS)["spec"]
    assert on_cpu["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "digits-v3-fp32"}
    assert on_cpu["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
    ]
    assert (on_cpu["minReplicas"], on_cpu["maxReplicas"]) == (1, 6)  # never below what the spec asked for

    on_rps = autoscaler_manifest(spec, RPS_OPTIONS)["spec"]
    assert on_rps["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "modelgallery_inference_requests_per_second"},
                "target": {"type": "AverageValue", "averageValue": "2500m"},
            },
        }
    ]


def test_the_disruption_budget_lets_one_pod_go_at_a_time() -> None:
    budget = disruption_budget_manifest(cpu_spec(replicas=5), OPTIONS)["spec"]
    assert budget["maxUnavailable"] == 1
    assert "minAvailable" not in budget


def test_the_service_is_cluster_ip_on_8500_and_grpc_on_8501() -> None:
    service = service_manifest(cpu_spec(), OPTIONS)
    assert service["metadata"]["name"] == "digits-v3-fp32"
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8500, "targetPort": "http", "protocol": "TCP"},
        {"name": "grpc", "port": 8501, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"},
    ]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"deployment_id": "3d-unet-v1-fp32"}, "cannot name a Kubernetes Service"),
        ({"deployment_id": "Digits_V3"}, "cannot name a Kubernetes Service"),
        ({"cpu": "lots"}, "not a Kubernetes CPU quantity"),
        ({"memory": "2 GB"}, "not a Kubernetes quantity"),
        ({"replicas": -1}, "must not be negative"),
        ({"env": {"BAD NAME": "x"}}, "BAD NAME"),
    ],
)
def test_a_spec_kubernetes_would_refuse_is_refused_with_the_reason(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        deployment_manifest(cpu_spec(**changes), OPTIONS)


def test_names_and_labels_stay_within_kubernetes_limits() -> None:
    long_id = "a" * 62 + "b"
    assert len(fallback_name(long_id)) <= 63 and fallback_name(long_id).endswith("-cpu")
    value = label_value("Team/Digits MLP (v2)" + "x" * 80)
    assert len(value) <= 63
    assert re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]", value)


@pytest.mark.parametrize(
    "bad",
    [
        {"namespace": "Model_Gallery"},
        {"min_replicas": 5, "max_replicas": 2},
        {"gpu_tolerations": [{"key": "gpu", "effect": "Sometimes"}]},
        {"autoscale_metric": "memory"},
        {"unknown_knob": 1},
    ],
)
def test_bad_options_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        KubernetesOptions(**bad)
