"""The NetworkPolicies as the cluster enforces them: every connection the architecture makes is allowed,
nothing else is, and no one outside the namespace reaches NATS.

The policies are evaluated with Kubernetes' rules (a pod selected by any ingress policy accepts only
what one of their rules allows) against the labels the pods really carry: the rendered workloads, the
model servers the deployer creates (gallery_deployer.runtime.manifests) and the pods of a multi-node
training Job (gallery_trainer.multinode.kubernetes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import pytest
from deploy_k8s_objects import (
    OVERLAYS,
    Obj,
    container,
    find,
    kubernetes_options,
    manifests,
    model_server,
    of_kind,
    workloads,
)
from pydantic_settings import BaseSettings

from gallery_deployer.deployer.settings import DeployerSettings
from gallery_deployer.gateway.settings import GatewaySettings
from gallery_deployer.modelserver.settings import ModelServerSettings
from gallery_monitor.settings import MonitorSettings
from gallery_optimizer.settings import OptimizerSettings
from gallery_registry.settings import RegistrySettings
from gallery_trainer.multinode import indexed_job
from gallery_trainer.settings import TrainerSettings
from gallery_trainer.spec import parse_spec
from gallery_web.settings import GalleryWebSettings

NAMESPACE = "modelgallery"
NAME = "app.kubernetes.io/name"
PORTS = {
    "gallery": 8000,
    "registry": 8001,
    "trainer": 8002,
    "optimizer": 8003,
    "deployer": 8004,
    "monitor": 8005,
    "gateway": 8080,
}
# the services on the bus (the gallery, the web UI, is not one of them)
SERVICES = tuple(name for name in PORTS if name != "gallery")
SETTINGS: dict[str, type[BaseSettings]] = {
    "registry": RegistrySettings,
    "trainer": TrainerSettings,
    "optimizer": OptimizerSettings,
    "deployer": DeployerSettings,
    "monitor": MonitorSettings,
    "gateway": GatewaySettings,
    "modelserver": ModelServerSettings,
    "gallery": GalleryWebSettings,
}
WITH_DATABASE = ("registry", "trainer", "optimizer", "deployer", "monitor")
NCCL_PORT = 43_117  # any port: NCCL and gloo pick their own after the rendezvous

# Every connection Model Gallery makes inside the cluster (kubelet probes and port-forward aside).
NEEDED = {
    # the bus: every process with its own NATS user (the gallery: its sign-in sessions); routes between the
    # servers of a cluster
    *((caller, "nats", 4222) for caller in (*SERVICES, "modelserver", "gallery")),
    ("nats", "nats", 6222),
    # GALLERY_REGISTRY_URL: variants attached, aliases moved, training references read
    *((caller, "registry", 8001) for caller in ("optimizer", "deployer", "monitor")),
    # GALLERY_GATEWAY_URL: routes set by the deployer, cache figures scraped by the monitor
    *((caller, "gateway", 8080) for caller in ("deployer", "monitor")),
    # the gateway wakes a model scaled to zero (the deployer's public URL); the monitor lists deployments
    *((caller, "deployer", 8004) for caller in ("gateway", "monitor")),
    # inference through the gateway, canary replay by the deployer, the monitor's scrapes
    *((caller, "modelserver", 8500) for caller in ("gateway", "deployer", "monitor")),
    ("gateway", "modelserver", 8501),  # OIP over gRPC, from the gateway's gRPC front
    # the gallery reads (and, with the caller's token, writes) every service's API; it reads test splits
    *(("gallery", service, port) for service, port in PORTS.items() if service != "gallery"),
    ("gallery", "minio", 9000),
    # Prometheus scrapes every /metrics
    *(("prometheus", service, port) for service, port in PORTS.items()),
    ("prometheus", "modelserver", 8500),
    *((service, "postgres", 5432) for service in WITH_DATABASE),
    *((caller, "minio", 9000) for caller in (*WITH_DATABASE, "modelserver", "gallery-trainer", "minio-setup")),
    ("grafana", "prometheus", 9090),
    ("prometheus-adapter", "prometheus", 9090),  # the autoscalers' requests-per-second metric
    ("gallery-trainer", "gallery-trainer", 29500),
    ("gallery-trainer", "gallery-trainer", NCCL_PORT),
}
# Reachable from anywhere, like a public address: the clients' gateway, the Gallery people open,
# Grafana (it asks for a password), and a federated job's coordinator in the trainer, which the sites
# dial from their own institutions.
OPEN = {("gateway", 8080), ("gateway", 8081), ("gallery", 8000), ("grafana", 3000), ("trainer", 9092)}


@dataclass(frozen=True)
class Pod:
    name: str
    labels: dict[str, str]
    namespace: str = NAMESPACE
    namespace_labels: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)  # named container ports (a policy may name one)
    listens: tuple[int, ...] = ()


def pod_ports(pod: Obj) -> dict[str, int]:
    return {
        p.get("name", str(p["containerPort"])): p["containerPort"]
        for c in pod["containers"]
        for p in c.get("ports", [])
    }


def as_pod(template: Obj, namespace_labels: dict[str, str], extra_ports: tuple[int, ...] = ()) -> Pod:
    labels = template["metadata"]["labels"]
    ports = pod_ports(template["spec"])
    return Pod(labels[NAME], labels, NAMESPACE, namespace_labels, ports, (*ports.values(), *extra_ports))


@cache
def training_pod_template() -> Obj:
    doc = {
        "name": "digits-mlp",
        "data": {"source": "builtin", "name": "digits"},
        "engine": {"ranks": 4, "backend": "gloo", "nodes": [{"host": "a", "slots": 2}, {"host": "b", "slots": 2}]},
    }
    (job,) = [o for o in indexed_job(parse_spec(doc), "j1", "trainer:1", "jobs", NAMESPACE) if o["kind"] == "Job"]
    template: Obj = job["spec"]["template"]
    return template


def pods(objs: list[Obj]) -> list[Pod]:
    """Every pod of the namespace: the workloads, the deployer's model servers, a training Job's pods."""
    namespace = find(objs, "Namespace", NAMESPACE)
    ns_labels = {**namespace["metadata"].get("labels", {}), "kubernetes.io/metadata.name": NAMESPACE}
    found = [as_pod(w["spec"]["template"], ns_labels) for w in workloads(objs)]
    options = kubernetes_options(objs)
    found += [as_pod(model_server(options, gpu)["spec"]["template"], ns_labels) for gpu in (False, True)]
    found.append(as_pod(training_pod_template(), ns_labels, extra_ports=(NCCL_PORT,)))
    return found


def strangers() -> list[Pod]:
    """Sources that are not Model Gallery: a stray pod of the namespace, pods of other namespaces."""
    return [
        Pod("stranger", {"app": "debug-shell"}, NAMESPACE, {"kubernetes.io/metadata.name": NAMESPACE}),
        Pod("outside", {"app": "web"}, "default", {"kubernetes.io/metadata.name": "default"}),
        Pod("ingress", {NAME: "ingress-nginx"}, "ingress-nginx", {"kubernetes.io/metadata.name": "ingress-nginx"}),
        Pod(
            "prometheus-adapter",
            {NAME: "prometheus-adapter"},
            "monitoring",
            {"kubernetes.io/metadata.name": "monitoring"},
        ),
        # a pod elsewhere that copies a Model Gallery service's labels gains nothing by it
        Pod("impostor", {NAME: "trainer"}, "default", {"kubernetes.io/metadata.name": "default"}),
    ]


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Kubernetes' LabelSelector semantics."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if (
            (operator == "In" and (not present or labels[key] not in values))
            or (operator == "NotIn" and present and labels[key] in values)
            or (operator == "Exists" and not present)
            or (operator == "DoesNotExist" and present)
        ):
            return False
    return True


def peer_admits(peer: Obj, source: Pod) -> bool:
    if "ipBlock" in peer:
        return True  # an address range may hold any pod or machine
    if "namespaceSelector" in peer:
        in_namespace = selects(peer["namespaceSelector"], source.namespace_labels)
    else:
        in_namespace = source.namespace == NAMESPACE
    return in_namespace and ("podSelector" not in peer or selects(peer["podSelector"], source.labels))


def port_admits(rule_port: Obj, destination: Pod, port: int) -> bool:
    if rule_port.get("protocol", "TCP") != "TCP":
        return False
    wanted = rule_port.get("port")
    if wanted is None:
        return True
    if isinstance(wanted, str):
        return destination.ports.get(wanted) == port
    last = rule_port.get("endPort") or wanted
    return bool(wanted <= port <= last)


def rule_admits(rule: Obj, source: Pod, destination: Pod, port: int) -> bool:
    ports = rule.get("ports") or [{}]
    peers = rule.get("from") or [{"namespaceSelector": {}}, {"ipBlock": {"cidr": "0.0.0.0/0"}}]
    return any(port_admits(p, destination, port) for p in ports) and any(peer_admits(p, source) for p in peers)


def ingress_policies(objs: list[Obj], destination: Pod) -> list[Obj]:
    return [
        p
        for p in of_kind(objs, "NetworkPolicy")
        if p["metadata"]["namespace"] == destination.namespace
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"]["podSelector"], destination.labels)
    ]


def allowed(objs: list[Obj], source: Pod, destination: Pod, port: int) -> bool:
    """Whether the cluster lets `source` open a TCP connection to `destination` on `port`."""
    policies = ingress_policies(objs, destination)
    if not policies:
        return True  # a pod no policy selects is not isolated
    return any(rule_admits(r, source, destination, port) for p in policies for r in p["spec"].get("ingress", []))


def connections(objs: list[Obj]) -> set[tuple[str, str, int]]:
    """Every (source, destination, port) the policies allow, over every pod and every port a pod listens on."""
    destinations = pods(objs)
    sources = destinations + strangers()
    return {
        (source.name, destination.name, port)
        for destination in destinations
        for port in destination.listens
        for source in sources
        if allowed(objs, source, destination, port)
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_of_the_namespace_denies_what_no_policy_allows(overlay: str) -> None:
    objs = manifests(overlay)
    (deny,) = [p for p in of_kind(objs, "NetworkPolicy") if p["metadata"]["name"] == "default-deny-ingress"]
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for pod in pods(objs):
        assert ingress_policies(objs, pod), f"{pod.name} is not isolated"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize(("source", "destination", "port"), sorted(NEEDED))
def test_each_connection_the_architecture_makes_is_allowed(
    overlay: str, source: str, destination: str, port: int
) -> None:
    objs = manifests(overlay)
    # every pod of that name: the deployer's GPU and CPU model servers, say
    sources = [p for p in pods(objs) + strangers() if p.name == source]
    destinations = [p for p in pods(objs) if p.name == destination]
    assert sources and destinations
    for dst in destinations:
        assert port in dst.listens, f"{destination} does not listen on {port}"
        for src in sources:
            assert allowed(objs, src, dst, port), f"{source} cannot reach {destination}:{port}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nothing_else_is_allowed(overlay: str) -> None:
    objs = manifests(overlay)
    sources = {p.name for p in pods(objs) + strangers()}
    expected = NEEDED | {(source, destination, port) for source in sources for destination, port in OPEN}
    extra = connections(objs) - expected
    assert not extra, f"allowed, and nothing needs it: {sorted(extra)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_policy_opens_the_nats_ports_beyond_model_gallerys_own_pods(overlay: str) -> None:
    objs = manifests(overlay)
    nats = find(objs, "StatefulSet", "nats")
    labels = nats["spec"]["template"]["metadata"]["labels"]
    for policy in of_kind(objs, "NetworkPolicy"):
        if not selects(policy["spec"]["podSelector"], labels):
            continue
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("from"), f"{policy['metadata']['name']}: a rule without `from` admits everyone"
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, f"{policy['metadata']['name']}: {peer} reaches past the namespace"
    for stranger in strangers():
        for port in (4222, 6222):
            assert not allowed(objs, stranger, as_pod(nats["spec"]["template"], {}), port), stranger.name


def test_the_policies_allow_each_call_a_services_settings_point_at() -> None:
    # A service calls another at GALLERY_<OTHER>_URL: adding such a setting must come with a policy rule.
    calls = {
        (caller, name.removesuffix("_url"), PORTS[name.removesuffix("_url")])
        for caller, settings in SETTINGS.items()
        for name in settings.model_fields
        if name.endswith("_url") and name.removesuffix("_url") in PORTS
    }
    assert calls, "no service settings name another service's URL"
    assert calls <= NEEDED


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_services_with_a_database_are_the_ones_postgres_admits(overlay: str) -> None:
    objs = manifests(overlay)
    with_database = {
        d["metadata"]["name"]
        for d in of_kind(objs, "Deployment")
        if any(e["name"] == "GALLERY_DATABASE_URL" for e in container(d).get("env", []))
    }
    assert with_database == set(WITH_DATABASE)
    assert {source for source, destination, _ in connections(objs) if destination == "postgres"} == with_database


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_may_scrape_every_port_its_configuration_scrapes(overlay: str) -> None:
    objs = manifests(overlay)
    scraped = {(destination, port) for source, destination, port in connections(objs) if source == "prometheus"}
    assert {(service, port) for service, port in PORTS.items()} | {("modelserver", 8500)} <= scraped
