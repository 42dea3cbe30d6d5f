"""What the services lean on in deploy/k8s: NATS with JetStream, PostgreSQL, MinIO, Prometheus and
Grafana; and what the production overlay adds: a NATS cluster, disruption budgets, the GPU node pool."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
import yaml
from deploy_k8s_objects import (
    OVERLAYS,
    Obj,
    config_map_mounted,
    container,
    env_value,
    find,
    kubernetes_options,
    manifests,
    model_server,
    of_kind,
    pod_spec,
    port_number,
    selected_by,
    workloads,
)

from gallery_deployer.runtime.manifests import KubernetesOptions


def settings(objs: list[Obj]) -> dict[str, str]:
    data: dict[str, str] = find(objs, "ConfigMap", "modelgallery-config")["data"]
    return data


def service_port(objs: list[Obj], host: str, port: int) -> int:
    """The container port a `host:port` inside the namespace reaches, through the Service `host`."""
    svc = find(objs, "Service", host.split(".")[0])
    (target,) = [p["targetPort"] for p in svc["spec"]["ports"] if p["port"] == port]
    (workload,) = selected_by(objs, svc["spec"]["selector"])
    return port_number(workload, target)


def nats_config(objs: list[Obj]) -> str:
    text: str = config_map_mounted(objs, find(objs, "StatefulSet", "nats"), "/etc/nats")["data"]["nats.conf"]
    return text


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nats_runs_jetstream_with_sync_always_on_a_persistent_volume(overlay: str) -> None:
    objs = manifests(overlay)
    nats = find(objs, "StatefulSet", "nats")
    config = nats_config(objs)
    jetstream = re.search(r"jetstream\s*\{([^}]*)\}", config)
    assert jetstream, "JetStream is off"
    assert re.search(r"^\s*sync_interval:\s*always\s*$", jetstream[1], re.M)
    store_dir = re.search(r"store_dir:\s*(\S+)", jetstream[1])[1]  # type: ignore[index]
    (claim,) = nats["spec"]["volumeClaimTemplates"]
    mounts = {m["mountPath"]: m["name"] for m in container(nats)["volumeMounts"]}
    assert mounts[store_dir] == claim["metadata"]["name"], "the stream files live on the claimed volume"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]

    url = urlsplit(settings(objs)["GALLERY_NATS_URL"])
    assert service_port(objs, url.hostname or "", url.port or 4222) == 4222
    headless = find(objs, "Service", nats["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True


def test_production_clusters_three_nats_servers_one_per_node_and_keeps_a_quorum_through_drains() -> None:
    objs = manifests("production")
    nats = find(objs, "StatefulSet", "nats")
    assert nats["spec"]["replicas"] == 3
    config = nats_config(objs)
    routes = re.search(r"routes:\s*\[([^\]]*)\]", config)
    assert routes, "no cluster routes"
    headless = nats["spec"]["serviceName"]
    assert sorted(routes[1].split()) == [f"nats://nats-{i}.{headless}:6222" for i in range(3)]
    assert port_number(nats, "cluster") == 6222
    assert re.search(r"server_name:\s*\$POD_NAME", config), "each member needs its own JetStream name"
    spread = pod_spec(nats)["topologySpreadConstraints"]
    assert {"topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule"}.items() <= spread[0].items()
    (budget,) = [b for b in of_kind(objs, "PodDisruptionBudget") if b["metadata"]["name"] == "nats"]
    assert budget["spec"]["minAvailable"] == 2


EVERY_WORKLOAD = (
    *("gallery", "registry", "trainer", "optimizer", "deployer", "gateway", "monitor"),
    *("nats", "minio", "postgres", "prometheus", "grafana"),
)


def test_dev_runs_one_of_everything_but_the_gateway() -> None:
    objs = manifests("dev")
    replicas = {w["metadata"]["name"]: w["spec"].get("replicas", 1) for w in workloads(objs) if w["kind"] != "Job"}
    assert replicas == {**dict.fromkeys(EVERY_WORKLOAD, 1), "gateway": 2}  # replicas share routes over NATS
    assert [b["metadata"]["name"] for b in of_kind(objs, "PodDisruptionBudget")] == ["gateway"]
    assert not re.search(r"^cluster\s*\{", nats_config(objs), re.M), "one server has no cluster to route to"


def test_production_budgets_every_replicated_workload_and_no_singleton() -> None:
    objs = manifests("production")
    budgets = of_kind(objs, "PodDisruptionBudget")
    replicated = {w["metadata"]["name"] for w in workloads(objs) if w["spec"].get("replicas", 1) >= 2}
    assert replicated == {"registry", "nats", "gateway", "optimizer", "deployer", "monitor"}
    for name in ("optimizer", "deployer", "monitor"):  # leaders and workers hand over: a new pod up first
        (deployment,) = [w for w in workloads(objs) if w["metadata"]["name"] == name]
        assert deployment["spec"]["strategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
        }, name
    covered = set()
    for budget in budgets:
        (workload,) = selected_by(objs, budget["spec"]["selector"]["matchLabels"])
        replicas = workload["spec"]["replicas"]
        assert replicas >= 2, f"a budget on single-replica {workload['metadata']['name']} would block every drain"
        assert 1 <= budget["spec"]["minAvailable"] < replicas
        covered.add(workload["metadata"]["name"])
    assert covered == replicated


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_servers_get_the_shared_settings_and_secrets_in_the_deployers_namespace(overlay: str) -> None:
    objs = manifests(overlay)
    options = kubernetes_options(objs)
    assert options.namespace == "modelgallery"
    assert env_value(container(find(objs, "Deployment", "deployer")), "GALLERY_RUNTIME") == "kubernetes"
    served = container(model_server(options, gpu=False), "modelserver")
    assert [next(iter(s.values()))["name"] for s in served["envFrom"]] == [
        "modelgallery-config",
        "modelgallery-secrets",
    ]
    assert find(objs, "ConfigMap", options.config_map or "")
    # modelgallery-secrets carries GALLERY_API_TOKENS: without tokens a model server listens on loopback only.
    deployer_env = {e["name"] for e in container(find(objs, "Deployment", "deployer"))["env"]}
    assert "GALLERY_MODEL_SERVER_TOKEN" in deployer_env


def test_production_sends_gpu_model_servers_to_the_gpu_pool_and_cpu_ones_elsewhere() -> None:
    options = kubernetes_options(manifests("production"))
    gpu = pod_spec(model_server(options, gpu=True))
    assert gpu["nodeSelector"] == {"modelgallery.io/node-pool": "gpu"}
    tolerated = {(t["key"], t.get("value"), t["effect"]) for t in gpu["tolerations"]}
    assert {("modelgallery.io/node-pool", "gpu", "NoSchedule"), ("nvidia.com/gpu", None, "NoSchedule")} <= tolerated
    assert gpu["containers"][0]["image"] == "modelgallery/modelserver-gpu:0.1.0"
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    cpu = pod_spec(model_server(options, gpu=False))
    assert "nodeSelector" not in cpu and "tolerations" not in cpu
    assert cpu["containers"][0]["image"] == "modelgallery/modelserver:0.1.0"
    assert options.min_replicas >= 2


def test_dev_keeps_the_runtimes_gpu_defaults() -> None:
    assert kubernetes_options(manifests("dev")).gpu_node_selector == KubernetesOptions().gpu_node_selector


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_postgres_creates_the_database_and_role_of_every_service_that_uses_one(overlay: str) -> None:
    objs = manifests(overlay)
    postgres = find(objs, "StatefulSet", "postgres")
    (script,) = config_map_mounted(objs, postgres, "/docker-entrypoint-initdb.d")["data"].values()
    urls = [
        urlsplit(e["value"])
        for w in of_kind(objs, "Deployment")
        for e in container(w).get("env", [])
        if e["name"] == "GALLERY_DATABASE_URL"
    ]
    assert {u.path.lstrip("/") for u in urls} == {"registry", "trainer", "optimizer", "deployer", "monitor"}
    for url in urls:
        assert url.scheme == "postgresql+psycopg"
        assert re.search(rf"CREATE ROLE {url.username} LOGIN PASSWORD :'app_password'", script)
        assert re.search(rf"CREATE DATABASE {url.path.lstrip('/')} OWNER {url.username};", script)
        assert url.password == "$(DATABASE_PASSWORD)"
        assert service_port(objs, url.hostname or "", url.port or 5432) == 5432
    (claim,) = postgres["spec"]["volumeClaimTemplates"]
    data_dir = env_value(container(postgres), "PGDATA")
    mounts = {m["name"]: m["mountPath"] for m in container(postgres)["volumeMounts"]}
    assert data_dir.startswith(mounts[claim["metadata"]["name"]] + "/")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_minio_job_creates_the_bucket_of_the_artifact_root(overlay: str) -> None:
    objs = manifests(overlay)
    shared = settings(objs)
    assert shared["GALLERY_ARTIFACT_ROOT"].startswith("s3://")
    host, port = shared["GALLERY_S3_ENDPOINT"].split(":")
    assert service_port(objs, host, int(port)) == 9000
    job = find(objs, "Job", "minio-setup")
    mc = container(job, "mc")
    assert mc["envFrom"] == [{"configMapRef": {"name": "modelgallery-config"}}]
    (script,) = config_map_mounted(objs, job, "/scripts")["data"].values()
    assert (
        'bucket="${GALLERY_ARTIFACT_ROOT#s3://}"' in script and 'mc mb --ignore-existing "gallery/${bucket}"' in script
    )
    assert {e["name"] for e in mc["env"]} >= {"GALLERY_S3_ACCESS_KEY", "GALLERY_S3_SECRET_KEY", "MINIO_ROOT_USER"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_finds_every_target_its_configuration_names(overlay: str) -> None:
    objs = manifests(overlay)
    prometheus = find(objs, "Deployment", "prometheus")
    files = config_map_mounted(objs, prometheus, "/etc/prometheus")["data"]
    config = yaml.safe_load(files["prometheus.yml"])
    assert set(config.get("rule_files", [])) <= files.keys()
    jobs = {}
    for job in config["scrape_configs"]:
        for sd in job["kubernetes_sd_configs"]:
            assert sd["namespaces"]["names"] == [prometheus["metadata"]["namespace"]]
        keep = job["relabel_configs"][0]
        if keep["source_labels"] == ["__meta_kubernetes_service_name", "__meta_kubernetes_endpoint_port_number"]:
            name, port = keep["regex"].split(";")
            svc = find(objs, "Service", name)
            (workload,) = selected_by(objs, svc["spec"]["selector"])
            assert int(port) in [port_number(workload, p["targetPort"]) for p in svc["spec"]["ports"]]
            jobs[name] = int(port)
    assert set(jobs) == {"gallery", "registry", "trainer", "optimizer", "deployer", "monitor", "gateway"}
    (rule,) = find(objs, "Role", "prometheus")["rules"]
    assert set(rule["resources"]) == {"pods", "services", "endpoints"} and set(rule["verbs"]) == {
        "get",
        "list",
        "watch",
    }
    assert pod_spec(prometheus)["serviceAccountName"] == "prometheus"
    binding = find(objs, "RoleBinding", "prometheus")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "prometheus", "namespace": "modelgallery"}]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grafana_provisions_the_prometheus_datasource_and_the_dashboard(overlay: str) -> None:
    objs = manifests(overlay)
    grafana = find(objs, "Deployment", "grafana")
    (datasources,) = config_map_mounted(objs, grafana, "/etc/grafana/provisioning/datasources")["data"].values()
    (source,) = yaml.safe_load(datasources)["datasources"]
    url = urlsplit(source["url"])
    assert service_port(objs, url.hostname or "", url.port or 80) == 9090
    assert url.hostname in ("prometheus", f"prometheus.{grafana['metadata']['namespace']}.svc")
    (providers,) = config_map_mounted(objs, grafana, "/etc/grafana/provisioning/dashboards")["data"].values()
    (provider,) = yaml.safe_load(providers)["providers"]
    dashboards = config_map_mounted(objs, grafana, provider["options"]["path"])["data"]
    assert "modelgallery.json" in dashboards
