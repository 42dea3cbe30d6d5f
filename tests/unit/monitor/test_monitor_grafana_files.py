"""The Prometheus and Grafana files in deploy/ parse and ask for metrics the code really exports.

A dashboard panel over a misspelt or renamed metric stays empty without any error, so the metric
names in every PromQL expression are checked against the metrics the sources define.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import yaml

from gallery_common.contracts import serving_metrics
from gallery_deployer.runtime.base import ServerSpec
from gallery_deployer.runtime.kubernetes_options import KubernetesOptions
from gallery_deployer.runtime.manifests import PORT as MODELSERVER_PORT
from gallery_deployer.runtime.manifests import RPS_METRIC, deployment_manifest

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "modelgallery.json"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
RULES = DEPLOY / "prometheus" / "rules.yml"
SERVICES = {"registry": 8001, "trainer": 8002, "optimizer": 8003, "deployer": 8004, "monitor": 8005, "gateway": 8080}

# a name written out, or a serving metric name the contract owns (`REQUESTS`, `serving_metrics.CACHE_HITS`)
_DEFINITION = re.compile(
    r"\b(counter|histogram|gauge)\(\s*(?:\"([A-Za-z0-9_]+)\"|(?:serving_metrics\.)?([A-Z][A-Z_]*)\b)"
)
_METRIC = re.compile(r"\bmodelgallery_[A-Za-z0-9_]+")


def exported_series() -> set[str]:
    """Every series name the sources export through gallery_common.telemetry, as Prometheus stores it."""
    names: set[str] = set()
    for source in [*(REPO / "libs").rglob("*.py"), *(REPO / "services").rglob("*.py")]:
        for kind, written, constant in _DEFINITION.findall(source.read_text(encoding="utf-8")):
            name = written or getattr(serving_metrics, constant, None)
            assert name, f"{source}: the metric name {constant} is not one of gallery_common's serving metrics"
            full = name if name.startswith("modelgallery_") else f"modelgallery_{name}"
            if kind == "counter":
                base = full.removesuffix("_total")
                names |= {f"{base}_total", f"{base}_created"}
            elif kind == "histogram":
                names |= {f"{full}_bucket", f"{full}_sum", f"{full}_count", f"{full}_created"}
            else:
                names.add(full)
    return names


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every templating query."""
    found = [
        (panel["title"], target["expr"])
        for panel in walk_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    found += [
        (f"variable {v['name']}", v["definition"]) for v in dashboard["templating"]["list"] if v["type"] == "query"
    ]
    return found


def test_the_source_scan_finds_the_serving_metrics() -> None:
    series = exported_series()
    assert {"modelgallery_inference_requests_total", "modelgallery_gateway_breaker_state"} <= series
    assert "modelgallery_inference_batch_size_count_sum" in series, "a histogram's _sum series"
    assert "modelgallery_inference_requests_total_total" not in series


def test_every_dashboard_expression_asks_for_exported_metrics(expressions: list[tuple[str, str]]) -> None:
    series = exported_series()
    unknown = {
        (where, name) for where, expr in expressions for name in _METRIC.findall(expr) if name not in series
    }  # fmt: skip
    assert not unknown, f"panels over metrics nothing exports: {sorted(unknown)}"
    assert all(_METRIC.search(expr) for _, expr in expressions), "every expression reads a Model Gallery metric"


def test_the_dashboard_shows_the_figures_the_monitor_shows(expressions: list[tuple[str, str]]) -> None:
    used = {name for _, expr in expressions for name in _METRIC.findall(expr)}
    for needed in (
        "modelgallery_inference_requests_total",
        "modelgallery_inference_request_duration_seconds_bucket",
        "modelgallery_inference_batch_size_count_sum",
        "modelgallery_inference_batch_size_count_count",
        "modelgallery_gateway_fallbacks_total",
        "modelgallery_gateway_cache_hits_total",
        "modelgallery_gateway_cache_misses_total",
        "modelgallery_gateway_breaker_state",
        "modelgallery_bus_events_published_total",
        "modelgallery_bus_events_handled_total",
    ):
        assert needed in used, f"no panel shows {needed}"
    quantiles = {q for _, expr in expressions for q in re.findall(r"histogram_quantile\((0\.\d+)", expr)}
    assert {"0.5", "0.95", "0.99"} <= quantiles
    per_version = [e for _, e in expressions if re.search(r"by \((le, )?model, version, variant\)", e)]
    assert len(per_version) >= 6, "requests, errors, latency and batch size are split per model, version and variant"


def test_expressions_are_well_formed(expressions: list[tuple[str, str]]) -> None:
    for where, expr in expressions:
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), where
        for inner in re.findall(r"histogram_quantile\([^,]+,(.*)", expr):
            assert "_bucket" in inner and re.search(r"by \(le\b", inner), f"{where}: quantile needs buckets by le"
        for name in re.findall(r"\b(?:rate|increase)\((modelgallery_[A-Za-z0-9_]+)", expr):
            assert name.endswith(("_total", "_bucket", "_sum", "_count")), f"{where}: rate() over a gauge {name}"


def test_panels_have_unique_ids_and_use_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    panels = list(walk_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and len(ids) >= 10
    for panel in panels:
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys() and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")
    provisioned = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert variable["current"]["value"] == provisioned["datasources"][0]["uid"]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/modelgallery.yaml").read_text())
    assert provider["providers"][0]["type"] == "file" and provider["providers"][0]["options"]["path"]


def _scrape_jobs() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_prometheus_scrapes_every_service_on_its_port() -> None:
    jobs = _scrape_jobs()
    advertised = {ep.name: ep.load().port for ep in entry_points(group="modelgallery.services")}
    for name, port in {**SERVICES, **advertised}.items():
        assert name in jobs, f"no scrape job for {name}"
        keep = [r for r in jobs[name]["relabel_configs"] if r.get("action") == "keep"]
        assert [r["regex"] for r in keep] == [f"{name};{port}"], f"{name} should be scraped on {port}"
        assert keep[0]["source_labels"] == ["__meta_kubernetes_service_name", "__meta_kubernetes_endpoint_port_number"]


def _meta_label(kubernetes_label: str) -> str:
    return "__meta_kubernetes_pod_label_" + re.sub(r"[^A-Za-z0-9_]", "_", kubernetes_label)


def test_model_servers_are_found_by_the_labels_the_deployer_puts_on_them() -> None:
    job = _scrape_jobs()["modelserver"]
    assert job["honor_labels"] is True, "the servers' own model/version/variant labels must win"
    spec = ServerSpec(deployment_id="digits-mlp-v2", model="digits-mlp", version=2, variant="int8-dynamic",
                      artifact_uri="s3://models/m.onnx", artifact_sha256="a" * 64)  # fmt: skip
    pod = deployment_manifest(spec, KubernetesOptions())["spec"]["template"]
    pod_labels = {_meta_label(k): v for k, v in pod["metadata"]["labels"].items()}
    ports = [str(p["containerPort"]) for c in pod["spec"]["containers"] for p in c.get("ports", [])]
    rules = job["relabel_configs"]
    for rule in rules:
        if rule.get("action") == "keep":
            (source,) = rule["source_labels"]
            value = {**pod_labels, "__meta_kubernetes_pod_container_port_number": ports[0]}.get(source)
            assert value is not None and re.fullmatch(rule["regex"], value), f"{source} would drop the deployer's pods"
    assert ports[0] == str(MODELSERVER_PORT)
    (by_port,) = [r for r in rules if r.get("source_labels") == ["__meta_kubernetes_pod_container_port_number"]]
    scraped = [port for port in ports if re.fullmatch(by_port["regex"], port)]
    assert scraped == [str(MODELSERVER_PORT)], "a model server is scraped once, on its HTTP port (not on gRPC's)"
    targets = {r["target_label"]: r["source_labels"][0] for r in rules if r.get("action", "replace") == "replace"}
    for label, value in (("model", "digits-mlp"), ("version", "2"), ("variant", "int8-dynamic")):
        assert pod_labels.get(targets[label]) == value, f"the {label} target label comes from a pod label"


def test_recording_and_alerting_rules_read_exported_metrics() -> None:
    rules = [r for group in yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"] for r in group["rules"]]
    series = exported_series()
    for rule in rules:
        assert set(_METRIC.findall(rule["expr"])) <= series, rule.get("record") or rule["alert"]
    assert RPS_METRIC in {r.get("record") for r in rules}, "the autoscaler's requests-per-second metric is recorded"
    assert "rules.yml" in yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))["rule_files"]
