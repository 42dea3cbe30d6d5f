"""The deployer's and the monitor's accounts may do what leader election over a Kubernetes Lease does,
on their own Lease and no other: `LeaseLeaderLock` is driven through a whole election (create, read,
renew, a takeover, release) against the fake Kubernetes API of the deployer's tests, and each request
becomes the (API group, resource, verb, name) RBAC checks against the Roles bound to the account."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from deploy_k8s_objects import OVERLAYS, ROOT, container, find, manifests, of_kind, pod_spec
from kubernetes import client

from gallery_common.leader import Claim
from gallery_common.leader_lease import LeaseLeaderLock, lease_name

_FAKE_DIR = str(ROOT / "tests" / "integration" / "deployer")
if _FAKE_DIR not in sys.path:
    sys.path.insert(0, _FAKE_DIR)
k8s_api_fake: Any = importlib.import_module("k8s_api_fake")

VERBS = {"POST": "create", "GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
Request = tuple[str, str, str, str | None]  # (API group, resource, verb, name or None for a collection)


@pytest.fixture
def fake() -> Iterator[Any]:
    with k8s_api_fake.FakeKubernetesApi() as api:
        yield api


async def elect(fake: Any, role: str) -> set[Request]:
    """What RBAC checks for the requests of a take, a read, renewals, a takeover and a release."""
    api_client = client.ApiClient(client.Configuration(host=fake.url, no_proxy="127.0.0.1"))
    try:
        first, second = (LeaseLeaderLock(role, 1.0, "modelgallery", api_client) for _ in range(2))
        held = await first.take(None, Claim("a", None, 1.0))
        held = await first.renew(held, Claim("a", None, 1.0))
        taken = await second.take(await second.read(), Claim("b", None, 1.0))
        await second.release(await second.renew(taken, Claim("b", None, 1.0)))
    finally:
        api_client.close()
    checked = set()
    for request in fake.requests:
        parts = request.path.strip("/").split("/")
        at = parts.index("namespaces")
        name = parts[at + 3] if len(parts) > at + 3 else None
        checked.add(("coordination.k8s.io", parts[at + 2], VERBS[request.method], name))
    return checked


def allowed(roles: list[dict[str, Any]], request: Request) -> bool:
    group, resource, verb, name = request
    return any(
        group in rule["apiGroups"]
        and resource in rule["resources"]
        and verb in rule["verbs"]
        and ("resourceNames" not in rule or name in rule["resourceNames"])
        for role in roles
        for rule in role["rules"]
    )


def roles_of(objs: list[dict[str, Any]], account: str) -> list[dict[str, Any]]:
    """The Roles RoleBindings grant to ServiceAccount `account` in its namespace."""
    bound = [
        b["roleRef"]["name"]
        for b in of_kind(objs, "RoleBinding")
        if {"kind": "ServiceAccount", "name": account, "namespace": "modelgallery"} in b["subjects"]
    ]
    return [find(objs, "Role", name) for name in bound]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("role", ["deployer", "monitor"])
async def test_each_account_may_create_read_and_update_its_own_lease_and_no_other(
    fake: Any, overlay: str, role: str
) -> None:
    checked = await elect(fake, role)
    mine = lease_name(role)
    assert checked == {
        ("coordination.k8s.io", "leases", "create", None),
        ("coordination.k8s.io", "leases", "get", mine),
        ("coordination.k8s.io", "leases", "update", mine),
    }
    roles = roles_of(manifests(overlay), role)
    assert [r for r in checked if not allowed(roles, r)] == []
    other = lease_name("monitor" if role == "deployer" else "deployer")
    assert not allowed(roles, ("coordination.k8s.io", "leases", "update", other)), "it may replace another's Lease"
    assert not allowed(roles, ("coordination.k8s.io", "leases", "delete", mine)), "deleting restarts the term"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_deployers_account_may_update_its_lease(overlay: str) -> None:
    roles = roles_of(manifests(overlay), "deployer")
    assert allowed(roles, ("coordination.k8s.io", "leases", "update", "deployer-leader"))


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("role", ["deployer", "monitor"])
def test_deployer_and_monitor_pods_carry_their_token_and_name_themselves_by_their_pod(overlay: str, role: str) -> None:
    objs = manifests(overlay)
    workload = find(objs, "Deployment", role)
    assert pod_spec(workload)["serviceAccountName"] == role
    assert pod_spec(workload)["automountServiceAccountToken"] is True
    [identity] = [e for e in container(workload)["env"] if e["name"] == "GALLERY_LEADER_IDENTITY"]
    assert identity["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
