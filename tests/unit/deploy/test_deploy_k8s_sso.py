"""Single sign-on on Kubernetes (components/sso, rendered as production-sso): every process, model
servers included, trusts the issuer; each service that calls another as itself, and the Gallery, is its
own OIDC client with only its own secret; nothing else changes from production."""

from __future__ import annotations

from deploy_k8s_objects import K8S, env_file, env_of, find, manifests, pod_spec, workloads

CLIENTS = ("gallery", "gateway", "deployer", "optimizer", "monitor")


def test_every_process_trusts_the_issuer_through_the_shared_config() -> None:
    config = find(manifests("production-sso"), "ConfigMap", "modelgallery-config")["data"]
    settings = env_file(K8S / "components" / "sso" / "sso.env")
    assert {key: config[key] for key in settings} == settings
    assert config["GALLERY_OIDC_ISSUER"].startswith("https://")
    # model servers get this ConfigMap from the deployer, so they verify the gateway's client token
    assert "/gallery-services/gateway=inference" in config["GALLERY_OIDC_GROUP_ROLES"]
    assert "GALLERY_OIDC_ISSUER" not in find(manifests("production"), "ConfigMap", "modelgallery-config")["data"]


def test_each_client_holds_its_own_secret_and_no_other() -> None:
    objs = manifests("production-sso")
    for workload in workloads(objs):
        name = workload["metadata"]["name"]
        env = {key: value for c in pod_spec(workload)["containers"] for key, value in env_of(c).items()}
        secret_refs = [
            value["valueFrom"]["secretKeyRef"]
            for value in env.values()
            if value.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "modelgallery-oidc-clients"
        ]
        if name in CLIENTS:
            assert env["GALLERY_OIDC_CLIENT_ID"]["value"] == name
            assert secret_refs == [{"name": "modelgallery-oidc-clients", "key": name}], name
        else:
            assert "GALLERY_OIDC_CLIENT_ID" not in env and secret_refs == [], name


def test_sso_adds_only_the_issuer_and_the_clients_to_production() -> None:
    def shape(overlay: str) -> set[tuple[str, str]]:
        return {(o["kind"], o["metadata"]["name"]) for o in manifests(overlay)}

    assert shape("production-sso") == shape("production")
