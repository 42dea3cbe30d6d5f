"""Which lock a service's election uses: GALLERY_LEADER_LOCK=lease, or auto on Kubernetes, is the Lease
<role>-leader, in GALLERY_LEADER_LEASE_NAMESPACE, else the namespace the service names, else the pod's,
else modelgallery; the API client comes from the kubeconfig outside a cluster."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from gallery_common.leader import LeaderSettings
from gallery_common.leader_lease import LeaseLeaderLock, open_leader_lock

# the fake Kubernetes API lives beside the deployer's integration tests
_FAKE_DIR = str(Path(__file__).resolve().parents[1] / "integration" / "deployer")
if _FAKE_DIR not in sys.path:
    sys.path.insert(0, _FAKE_DIR)
k8s_api_fake: Any = importlib.import_module("k8s_api_fake")


class NoBus:
    """The JetStream key is not what these tests choose: touching the bus fails them."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the JetStream lock was opened (bus.{name})")


@pytest.fixture(autouse=True)
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with k8s_api_fake.FakeKubernetesApi() as api:
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig")))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield


async def choose(settings: LeaderSettings, *, on_kubernetes: bool, namespace: str | None = None) -> LeaseLeaderLock:
    async with AsyncExitStack() as stack:
        lock = await open_leader_lock(
            settings, NoBus(), "deployer", stack, on_kubernetes=on_kubernetes, namespace=namespace
        )  # type: ignore[arg-type]
        assert isinstance(lock, LeaseLeaderLock)
        return lock


async def test_auto_on_kubernetes_is_the_lease_in_the_namespace_the_service_names() -> None:
    lock = await choose(LeaderSettings(leader_ttl_s=4.5), on_kubernetes=True, namespace="ml")
    assert (lock.name, lock.namespace, lock.ttl_s) == ("deployer-leader", "ml", 5.0)  # whole seconds, rounded up


async def test_the_namespace_setting_wins_and_outside_a_pod_the_default_is_modelgallery() -> None:
    chosen = LeaderSettings(leader_lock="lease", leader_lease_namespace="ops")
    assert (await choose(chosen, on_kubernetes=False, namespace="ml")).namespace == "ops"
    assert (await choose(LeaderSettings(leader_lock="lease"), on_kubernetes=False)).namespace == "modelgallery"


async def test_kv_and_auto_off_kubernetes_open_the_jetstream_key() -> None:
    for settings, on_kubernetes in ((LeaderSettings(leader_lock="kv"), True), (LeaderSettings(), False)):
        with pytest.raises(AssertionError, match="the JetStream lock was opened"):
            await choose(settings, on_kubernetes=on_kubernetes)
