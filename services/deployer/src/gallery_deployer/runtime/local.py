"""The `local` runtime, the embedded default: model servers as supervised child processes on this machine.

Each replica is `python -m gallery_deployer.modelserver` on a free loopback port, logging to
`<log_dir>/<deployment_id>/<replica>.log`. Replicas take traffic only once `/v2/health/ready`
answers 200 (the server warms the model before that), crash with a restart and backoff, roll one at
a time to a new spec, scale up and down, and scale to zero after an idle period.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections.abc import Awaitable, Mapping

import anyio
import httpx

from gallery_common.contracts.serving_metrics import parse_page
from gallery_common.errors import InvalidRequest, NotFound, Unavailable
from gallery_common.telemetry import get_logger

from ..modelserver.providers import prefers_openvino
from . import placement
from .base import ChangeCallback, DeploymentStatus, RuntimeState, ServerSpec
from .local_deployment import LocalDeployment
from .supervisor import LocalOptions, PortBook, Replica

__all__ = ["NO_GPU_FALLBACK", "LocalOptions", "LocalRuntime"]

log = get_logger(__name__)

NO_GPU_FALLBACK = "no GPU on this machine; serving on CPU"
_DEPLOYMENT_ID = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SETTLED = frozenset({RuntimeState.ready, RuntimeState.failed, RuntimeState.scaled_to_zero})
# Set per replica by the runtime itself, so the deployer's own values must not leak into its children.
_RUNTIME_OWNED = frozenset({"GALLERY_HOST", "GALLERY_PORT", "GALLERY_SERVICE_NAME"})


class LocalRuntime:
    """`base.Runtime` with model servers as child processes of this one (they die with it).

    `env` goes to every model server (the deployer passes its GALLERY_* settings), then each spec's
    own `env` on top. `on_change(status)` (given here or later to `watch`), sync or async, is called
    whenever a deployment's set of ready endpoints changes, in order and before a leaving replica is
    sent SIGTERM; it must not wait on `apply`, `scale` or `wake` of the same runtime.
    """

    name = "local"

    def __init__(
        self, options: LocalOptions, env: Mapping[str, str] | None = None, on_change: ChangeCallback | None = None
    ) -> None:
        self.options = options
        self._env = {k: v for k, v in (env or {}).items() if k not in _RUNTIME_OWNED}
        self._on_change = on_change
        self._deployments: dict[str, LocalDeployment] = {}
        self._ports = PortBook(options.host)
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(options.probe_timeout_s), trust_env=False)
        self._gpus: list[placement.GpuDevice] | None = None
        self._gpu_load: dict[tuple[str, int], int] = {}  # MB our replicas hold per (node, gpu)
        self._idle_task: asyncio.Task[None] | None = None
        self._closed = False

    def watch(self, on_change: ChangeCallback) -> None:
        """Report every change of a deployment's ready endpoints to `on_change` from now on."""
        self._on_change = on_change

    def _changed(self, status: DeploymentStatus) -> Awaitable[None] | None:
        return None if self._on_change is None else self._on_change(status)

    async def apply(self, spec: ServerSpec) -> DeploymentStatus:
        """Create the deployment, or roll it to `spec` one replica at a time; returns once its first
        replicas are started, without waiting for them to be ready (see wait_ready)."""
        if self._closed:
            raise Unavailable("the local runtime is closed")
        if spec.replicas < 0:
            raise InvalidRequest(f"replicas must be 0 or more, got {spec.replicas}")
        if not _DEPLOYMENT_ID.fullmatch(spec.deployment_id):  # it names the log folder, so no path tricks
            raise InvalidRequest(f"deployment_id must be a DNS-1123 label, got {spec.deployment_id!r}")
        if spec.gpu and self._gpus is None:
            self._gpus = await anyio.to_thread.run_sync(placement.detect_gpus)
            log.info("gpus_detected", gpus=[f"{g.node}/{g.index} {g.memory_mb} MB" for g in self._gpus])
        deployment = self._deployments.get(spec.deployment_id)
        if deployment is None:
            self._deployments[spec.deployment_id] = deployment = LocalDeployment(spec, self, self._changed)
        await deployment.apply(spec)
        self._watch_idle()
        return deployment.status()

    async def wait_ready(self, deployment_id: str, timeout_s: float) -> DeploymentStatus:
        """Block until every desired replica of the current spec is ready, it failed, or `timeout_s` passed."""
        deployment = self._get(deployment_id)
        await deployment.wait_until(lambda: deployment.status().state in _SETTLED, timeout_s)
        return deployment.status()

    async def status(self, deployment_id: str) -> DeploymentStatus:
        """The deployment now; NotFound when there is no such deployment."""
        return self._get(deployment_id).status()

    async def statuses(self) -> list[DeploymentStatus]:
        """Every deployment of this runtime, by id."""
        return [self._deployments[key].status() for key in sorted(self._deployments)]

    async def scale(self, deployment_id: str, replicas: int) -> DeploymentStatus:
        """Set the replica count and clear a failure. Up returns once the new replicas are started (not
        yet ready: see wait_ready); down drains the newest first and returns once they are stopped;
        0 leaves no process (`scaled_to_zero`)."""
        if replicas < 0:
            raise InvalidRequest(f"replicas must be 0 or more, got {replicas}")
        deployment = self._get(deployment_id)
        await deployment.scale(replicas)
        return deployment.status()

    async def wake(self, deployment_id: str, timeout_s: float | None = None) -> DeploymentStatus:
        """Scale a scaled-to-zero deployment back to its previous replica count, then wait until one
        replica is ready, it failed, or `timeout_s` (default ready_timeout_s) passed; a deployment that
        is not at zero is only waited on. Concurrent wakes share one start."""
        deployment = self._get(deployment_id)
        if deployment.wake_task is None or deployment.wake_task.done():
            deployment.wake_task = asyncio.get_running_loop().create_task(
                self._wake(deployment, self.options.ready_timeout_s if timeout_s is None else timeout_s)
            )
        return await asyncio.shield(deployment.wake_task)

    async def _wake(self, deployment: LocalDeployment, timeout_s: float) -> DeploymentStatus:
        if deployment.desired == 0:
            log.info("waking", deployment=deployment.id, replicas=deployment.wake_replicas)
            await deployment.scale(deployment.wake_replicas)
        deployment.last_activity = time.monotonic()
        await deployment.wait_until(lambda: deployment.status().ready > 0 or deployment.failure is not None, timeout_s)
        return deployment.status()

    async def delete(self, deployment_id: str) -> None:
        """Drain and stop every replica and forget the deployment; unknown ids are a no-op."""
        deployment = self._deployments.pop(deployment_id, None)
        if deployment is not None:
            await deployment.close()

    async def close(self) -> None:
        """Stop the idle watch and drain every model server (SIGKILL after drain_timeout_s); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._idle_task is not None:
            self._idle_task.cancel()
            await asyncio.gather(self._idle_task, return_exceptions=True)
        deployments, self._deployments = list(self._deployments.values()), {}
        await asyncio.gather(*(d.close() for d in deployments))
        await self._client.aclose()

    def pids(self, deployment_id: str) -> dict[str, int]:
        """Process id of each running replica of a deployment, by replica name."""
        return {r.name: r.pid for r in self._get(deployment_id).replicas if r.pid is not None}

    def _get(self, deployment_id: str) -> LocalDeployment:
        try:
            return self._deployments[deployment_id]
        except KeyError:
            raise NotFound(f"no deployment {deployment_id!r} in the local runtime") from None

    # -- ReplicaFactory, used by LocalDeployment -------------------------------------------------

    def create(self, deployment: LocalDeployment, spec: ServerSpec, name: str) -> Replica:
        """A new (not yet started) replica of `spec` with its environment, log file and GPU."""
        gpu, fallback = self._place(spec)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GALLERY_")}
        env.update(self._env)
        env.update(spec.env)
        env.update(spec.provider_env())
        env.update(GALLERY_HOST=self.options.host, PYTHONUNBUFFERED="1")
        if spec.gpu:
            env["CUDA_VISIBLE_DEVICES"] = str(gpu[1]) if gpu else ""
        return Replica(
            name,
            spec,
            env=env,
            log_path=self.options.log_dir / deployment.id / f"{name}.log",
            options=self.options,
            client=self._client,
            ports=self._ports,
            on_event=deployment.replica_changed,
            fallback=fallback,
            gpu=gpu,
            pythons=self._pythons(spec, gpu),
        )

    def _pythons(self, spec: ServerSpec, gpu: tuple[str, int] | None) -> list[str]:
        """The interpreters a replica tries in order: OpenVINO's first for a CPU replica whose policy
        prefers it (when that venv exists), then this one, whose ONNX Runtime has CUDA where it is installed."""
        openvino = self.options.openvino_python
        if gpu is None and prefers_openvino(spec.execution_providers):
            if openvino is not None and openvino.exists():
                return [str(openvino), sys.executable]
            # this interpreter's server then reports OpenVINO as "not in this ONNX Runtime build"
            log.warning("no_openvino_interpreter", deployment=spec.deployment_id, openvino_python=str(openvino))
        return [sys.executable]

    def release(self, replica: Replica) -> None:
        """Give back what a retired replica held (its GPU memory in the placement ledger)."""
        if replica.gpu is not None:
            self._gpu_load[replica.gpu] -= replica.spec.gpu_memory_mb

    def _place(self, spec: ServerSpec) -> tuple[tuple[str, int] | None, str | None]:
        """The GPU for one more replica of `spec`, or None and why it runs on the CPU."""
        if not spec.gpu:
            return None, None
        if not self._gpus:
            return None, NO_GPU_FALLBACK
        inventory = [
            placement.GpuDevice(g.node, g.index, g.memory_mb, g.used_mb + self._gpu_load.get(g.key, 0))
            for g in self._gpus
        ]
        plan = placement.plan_placement(
            [placement.PlacementRequest(spec.deployment_id, 1, spec.gpu_memory_mb)], inventory
        )
        slots = plan.assignments.get(spec.deployment_id)
        if not slots:
            reason = plan.unplaced[0].reason if plan.unplaced else "no GPU placement"
            return None, f"{reason}; serving on CPU"
        gpu = slots[0]
        self._gpu_load[gpu] = self._gpu_load.get(gpu, 0) + spec.gpu_memory_mb
        return gpu, None

    # -- scale to zero after an idle period ------------------------------------------------------

    def _watch_idle(self) -> None:
        if self.options.idle_scale_to_zero_s > 0 and self._idle_task is None:
            self._idle_task = asyncio.get_running_loop().create_task(self._idle_loop(), name="local-runtime-idle")

    async def _idle_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.idle_check_s)
            results = await asyncio.gather(
                *(self._check_idle(d) for d in list(self._deployments.values())), return_exceptions=True
            )
            for result in results:
                if isinstance(result, Exception):
                    log.error("idle_check_failed", error=f"{type(result).__name__}: {result}")

    async def _check_idle(self, deployment: LocalDeployment) -> None:
        now = time.monotonic()
        if deployment.status().state != RuntimeState.ready:
            deployment.last_activity = now  # only a settled deployment's quiet time counts as idle
            return
        ready = [r for r in deployment.replicas if r.ready and r.pid is not None]
        counts = await asyncio.gather(*(self._requests_served(r) for r in ready))
        served = {(r.name, r.pid or 0): n for r, n in zip(ready, counts, strict=True) if n is not None}
        if any(n > deployment.served.get(key, 0.0) for key, n in served.items()):
            deployment.last_activity = now
        deployment.served = served
        idle_s = now - deployment.last_activity
        if idle_s >= self.options.idle_scale_to_zero_s and deployment.desired > 0:
            log.info("scaling_to_zero", deployment=deployment.id, idle_s=round(idle_s, 1))
            await deployment.scale(0)

    async def _requests_served(self, replica: Replica) -> float | None:
        """Inference requests a replica has answered (any outcome), from its /metrics; None if unreachable."""
        try:
            response = await self._client.get(f"{replica.url}/metrics")
            response.raise_for_status()
        except httpx.HTTPError:
            return None
        return parse_page(response.text).overall().total
