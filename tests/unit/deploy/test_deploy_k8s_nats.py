"""NATS on Kubernetes as an operator checks it: the users nats-server knows are the code's principals,
each pod holds at most its own NATS password, and production speaks TLS to clients and between servers."""

from __future__ import annotations

import base64
import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml
from deploy_k8s_objects import (
    K8S,
    OVERLAYS,
    Obj,
    container,
    env_file,
    env_of,
    find,
    kubernetes_options,
    manifests,
    model_server,
    nats_config_files,
    nats_users,
    of_kind,
    pod_spec,
    production_secret_keys,
    render_k8s,
    workloads,
)

from gallery_common.nats_auth import principals

SERVICES = ("registry", "trainer", "optimizer", "deployer", "monitor", "gateway", "gallery")
USERS_SECRET = "modelgallery-nats-users"
PRODUCTION = K8S / "overlays" / "production"
CERT_MANAGER = PRODUCTION / "nats-tls-cert-manager.yaml"
# nats-server reads a password from its environment as a configuration value: one that does not begin
# with a letter may come out as a number, and some characters end it early
READ_AS_WRITTEN = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def dev_secret(name: str) -> dict[str, str]:
    (secret,) = [s for s in of_kind(manifests("dev"), "Secret") if s["metadata"]["name"] == name]
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


def users_secret_keys(overlay: str) -> set[str]:
    if overlay == "dev":
        return set(dev_secret(USERS_SECRET))
    return production_secret_keys()[USERS_SECRET]


def users_secret_keys_read(pod: Obj, container_name: str | None = None) -> list[str | None]:
    """The keys of modelgallery-nats-users a pod (or one of its containers) reads; None: every key."""
    keys: list[str | None] = []
    containers = pod["containers"] + pod.get("initContainers", [])
    for c in containers:
        if container_name not in (None, c["name"]):
            continue
        keys += [None for s in c.get("envFrom", []) if s.get("secretRef", {}).get("name") == USERS_SECRET]
        for env in c.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef", {})
            if ref.get("name") == USERS_SECRET:
                keys.append(ref["key"])
    if container_name is None:
        for volume in pod.get("volumes", []):
            if volume.get("secret", {}).get("secretName") == USERS_SECRET:
                keys += [item["key"] for item in volume["secret"].get("items", [])] or [None]
    return keys


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nats_server_knows_exactly_the_principals_of_the_code_with_their_permissions(overlay: str) -> None:
    files = nats_config_files(manifests(overlay))
    assert re.search(r"^include \./authorization\.conf$", files["nats.conf"], re.M), "nats.conf must include it"
    users = nats_users(files["authorization.conf"])
    expected = principals()
    assert [u["user"] for u in users] == list(expected)
    for user in users:
        assert user["permissions"] == expected[user["user"]].permissions(), user["user"]


def test_the_checked_in_authorization_conf_is_what_the_code_generates() -> None:
    module = render_k8s()
    assert module.NATS_AUTHORIZATION.read_text(encoding="utf-8") == module.nats_authorization(), (
        "deploy/k8s/base/nats/authorization.conf is stale: run scripts/render_k8s.py"
    )


def test_render_check_fails_naming_a_stale_authorization_conf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = render_k8s()
    stale = tmp_path / "authorization.conf"
    stale.write_text(module.nats_authorization().replace('"model.trained.*"', '"model.>"'), encoding="utf-8")
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "NATS_AUTHORIZATION", stale)
    monkeypatch.setattr(module, "RENDERINGS", {})
    monkeypatch.setattr(module, "find_kustomize", lambda: ["kustomize", "build"])
    assert module.main(["--check"]) == 1
    assert "authorization.conf is stale" in capsys.readouterr().err
    stale.write_text(module.nats_authorization(), encoding="utf-8")
    assert module.main(["--check"]) == 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nats_server_reads_each_users_password_from_that_users_key_of_the_secret(overlay: str) -> None:
    objs = manifests(overlay)
    nats = container(find(objs, "StatefulSet", "nats"))
    (source,) = [s for s in nats["envFrom"] if s.get("secretRef", {}).get("name") == USERS_SECRET]
    assert users_secret_keys(overlay) == set(principals()), "one password per NATS user, and no other key"
    for user in nats_users(nats_config_files(objs)["authorization.conf"]):
        assert user["password"] == f"${source['prefix']}{user['user']}"


def test_every_nats_password_is_read_by_nats_server_as_written() -> None:
    for user, password in dev_secret(USERS_SECRET).items():
        assert READ_AS_WRITTEN.fullmatch(password), f"dev: {user}"
    for user, password in env_file(PRODUCTION / f"{USERS_SECRET}.example.env").items():
        assert READ_AS_WRITTEN.fullmatch(password), f"production example: {user}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_pod_holds_its_own_nats_password_and_no_other(overlay: str) -> None:
    objs = manifests(overlay)
    for workload in workloads(objs):
        name, pod = workload["metadata"]["name"], pod_spec(workload)
        if name in SERVICES:
            assert users_secret_keys_read(pod) == [name], name
            env = env_of(container(workload))
            assert env["GALLERY_NATS_USER"]["value"] == name
            assert env["GALLERY_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": USERS_SECRET, "key": name}
        elif name == "nats":
            # the server checks every password; its sidecars see none
            assert users_secret_keys_read(pod, "nats") == [None]
            assert users_secret_keys_read(pod) == [None]
        else:
            assert users_secret_keys_read(pod) == [], f"{name} needs no NATS password"

    options = kubernetes_options(objs)
    for gpu in (False, True):
        server = model_server(options, gpu)
        assert users_secret_keys_read(pod_spec(server)) == ["modelserver"]
        assert env_of(container(server, "modelserver"))["GALLERY_NATS_USER"]["value"] == "modelserver"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_secret_every_service_and_model_server_reads_whole_holds_no_nats_password(overlay: str) -> None:
    # modelgallery-secrets reaches every service and model server through envFrom
    objs = manifests(overlay)
    shared = {
        s["secretRef"]["name"]
        for w in workloads(objs)
        for c in pod_spec(w)["containers"]
        for s in c.get("envFrom", [])
        if "secretRef" in s and not s.get("prefix")
    }
    assert USERS_SECRET not in shared
    for name in shared:
        if overlay == "dev":
            values = dev_secret(name)
            assert not set(values.values()) & set(dev_secret(USERS_SECRET).values()), name
        else:
            values = dict.fromkeys(production_secret_keys()[name], "")
        assert not [key for key in values if "NATS" in key.upper()], name


def conf_block(text: str, name: str, indent: str = "") -> dict[str, str]:
    """`key: value` settings of the block `name {...}` opened at `indent` in a nats-server configuration."""
    match = re.search(rf"^{indent}{name}\s*\{{(.*?)^{indent}\}}", text, re.M | re.S)
    assert match, f"no {name} block"
    return dict(re.findall(r"^\s*(\w+):\s*(\S+)\s*$", match[1], re.M))


def secret_mounted_at(workload: Obj, container_name: str, path: str) -> tuple[Obj, str]:
    """The Secret volume a container sees `path` in, and the file's name inside that mount."""
    c = container(workload, container_name)
    (mount,) = [m for m in c["volumeMounts"] if PurePosixPath(path).parent == PurePosixPath(m["mountPath"])]
    assert mount.get("readOnly") is True, f"{path} is mounted writable"
    (volume,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"]]
    return volume["secret"], PurePosixPath(path).name


def nats_tls_secret(objs: list[Obj]) -> str:
    """The Secret production's NATS servers take their certificate, key and CA from."""
    nats = find(objs, "StatefulSet", "nats")
    tls = conf_block(nats_config_files(objs)["nats.conf"], "tls")
    secret, _ = secret_mounted_at(nats, "nats", tls["cert_file"])
    name: str = secret["secretName"]
    return name


def test_production_nats_serves_tls_to_clients_and_mutual_tls_between_servers() -> None:
    objs = manifests("production")
    nats = find(objs, "StatefulSet", "nats")
    config = nats_config_files(objs)["nats.conf"]
    client_tls = conf_block(config, "tls")
    route_tls = conf_block(config, "tls", indent="  ")
    assert route_tls["verify"] == "true", "a route must present a certificate from the same CA"
    tls_secret = nats_tls_secret(objs)
    for block, keys in ((client_tls, ("cert_file", "key_file")), (route_tls, ("cert_file", "key_file", "ca_file"))):
        for key in keys:
            secret, file = secret_mounted_at(nats, "nats", block[key])
            assert secret["secretName"] == tls_secret
            assert file == {"cert_file": "tls.crt", "key_file": "tls.key", "ca_file": "ca.crt"}[key]
            assert "items" not in secret or file in [i["path"] for i in secret["items"]]


def test_production_clients_reach_nats_over_tls_and_check_its_certificate_against_the_ca() -> None:
    objs = manifests("production")
    settings = find(objs, "ConfigMap", "modelgallery-config")["data"]
    assert [urlsplit(u.strip()).scheme for u in settings["GALLERY_NATS_URL"].split(",")] == ["tls"]
    tls_secret = nats_tls_secret(objs)
    options = kubernetes_options(objs)
    clients = [find(objs, "Deployment", s) for s in SERVICES]
    clients += [model_server(options, gpu=False), model_server(options, gpu=True)]
    for client in clients:
        name = client["metadata"]["name"]
        main = pod_spec(client)["containers"][0]
        ca_file = env_of(main)["GALLERY_NATS_TLS_CA"]["value"]
        secret, file = secret_mounted_at(client, main["name"], ca_file)
        # the TLS Secret also holds the servers' private key: a client gets the CA certificate only
        assert secret == {"secretName": tls_secret, "items": [{"key": "ca.crt", "path": file}]}, name


def test_dev_nats_stays_plain_inside_the_cluster() -> None:
    objs = manifests("dev")
    assert find(objs, "ConfigMap", "modelgallery-config")["data"]["GALLERY_NATS_URL"].startswith("nats://")
    assert not re.search(r"^\s*tls\s*\{", nats_config_files(objs)["nats.conf"], re.M)


def test_the_cert_manager_certificate_names_every_address_nats_is_reached_at() -> None:
    objs = manifests("production")
    docs = [d for d in yaml.safe_load_all(CERT_MANAGER.read_text(encoding="utf-8")) if d]
    assert {d["metadata"]["namespace"] for d in docs} == {"modelgallery"}
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    (certificate,) = [
        d for d in docs if d["kind"] == "Certificate" and d["spec"]["secretName"] == nats_tls_secret(objs)
    ]
    spec = certificate["spec"]
    names = set(spec["dnsNames"])
    client_host = urlsplit(find(objs, "ConfigMap", "modelgallery-config")["data"]["GALLERY_NATS_URL"]).hostname
    routes = re.search(r"routes:\s*\[([^\]]*)\]", nats_config_files(objs)["nats.conf"])
    assert routes
    route_hosts = {urlsplit(route).hostname for route in routes[1].split()}
    assert {client_host, *route_hosts, "localhost"} <= names
    # each server is a TLS server to clients and, on routes, both server and client of the others
    assert {"server auth", "client auth"} <= set(spec["usages"])
    assert spec["renewBefore"] and spec["privateKey"]["rotationPolicy"] == "Always"
    # the issuer is a CA this file creates, itself issued by a self-signed issuer of the same file
    issuer = by_name[(spec["issuerRef"]["kind"], spec["issuerRef"]["name"])]
    (ca,) = [
        d for d in docs if d["kind"] == "Certificate" and d["spec"]["secretName"] == issuer["spec"]["ca"]["secretName"]
    ]
    assert ca["spec"]["isCA"] is True
    root = by_name[(ca["spec"]["issuerRef"]["kind"], ca["spec"]["issuerRef"]["name"])]
    assert root["spec"] == {"selfSigned": {}}
