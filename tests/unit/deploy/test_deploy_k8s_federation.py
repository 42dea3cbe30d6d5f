"""Federated training on Kubernetes: the trainer's coordinator is reachable by the sites on the port
federated jobs use, and production makes it a load balancer speaking TLS from a Secret."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest
import yaml
from deploy_k8s_objects import OVERLAYS, ROOT, Obj, container, find, manifests, pod_spec, port_number, selected_by

from gallery_trainer.federated.relay import TLS_ENV
from gallery_trainer.spec import EngineSpec

FEDERATION_SERVICE = "trainer-federation"
TLS_SECRET = "trainer-federation-tls"
# cert-manager's keys, the ones its Certificates write
TLS_KEYS = {"root_certificate": "ca.crt", "certificate": "tls.crt", "private_key": "tls.key"}


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


def test_dev_coordinator_speaks_plain_grpc_inside_the_cluster() -> None:
    assert tls_files(find(manifests("dev"), "Deployment", "trainer")) == {}
