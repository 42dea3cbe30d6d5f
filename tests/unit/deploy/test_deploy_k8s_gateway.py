"""The gateway on Kubernetes: two replicas or more that share routes through NATS, scaled on CPU by a
HorizontalPodAutoscaler, with a PodDisruptionBudget that keeps one serving through a drain."""

from __future__ import annotations

import pytest
from deploy_k8s_objects import find, manifests, of_kind, pod_spec, selected_by

OVERLAYS = ("dev", "production", "production-sso")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_runs_two_replicas_or_more_scaled_on_cpu(overlay: str) -> None:
    objs = manifests(overlay)
    gateway = find(objs, "Deployment", "gateway")
    (autoscaler,) = [h for h in of_kind(objs, "HorizontalPodAutoscaler") if h["metadata"]["name"] == "gateway"]
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    assert autoscaler["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert gateway["spec"]["replicas"] == autoscaler["spec"]["minReplicas"] >= 2
    assert autoscaler["spec"]["maxReplicas"] > autoscaler["spec"]["minReplicas"]
    (metric,) = autoscaler["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100
    # utilisation is a share of the request: without one the autoscaler has nothing to compute
    (container,) = pod_spec(gateway)["containers"]
    assert container["resources"]["requests"]["cpu"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_drain_leaves_a_gateway_serving_and_a_rollout_never_drops_below_the_count(overlay: str) -> None:
    objs = manifests(overlay)
    (budget,) = [b for b in of_kind(objs, "PodDisruptionBudget") if b["metadata"]["name"] == "gateway"]
    assert budget["spec"]["minAvailable"] == 1
    (selected,) = selected_by(objs, budget["spec"]["selector"]["matchLabels"])
    assert selected["metadata"]["name"] == "gateway"
    strategy = find(objs, "Deployment", "gateway")["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_replica_keeps_its_own_snapshot(overlay: str) -> None:
    """No volume shared by the replicas (a ReadWriteOnce claim would pin them all to one node)."""
    objs = manifests(overlay)
    volumes = {v["name"]: v for v in pod_spec(find(objs, "Deployment", "gateway"))["volumes"]}
    assert "emptyDir" in volumes["home"]
    assert not [c for c in of_kind(objs, "PersistentVolumeClaim") if c["metadata"]["name"].startswith("gateway")]
