"""A multi-node job as Kubernetes objects: a ConfigMap with the spec, a headless Service and an Indexed Job.

The Job runs one pod per node (completions = parallelism = nodes). With the Service as the pods'
subdomain, pod `i` is reachable as `<job>-<i>.<job>`, so rank 0's rendezvous is `<job>-0.<job>`. Every
pod runs the DeepSpeed launcher in per_node mode with `--node_rank $(JOB_COMPLETION_INDEX)`; the
workdir lives on a ReadWriteMany claim every pod mounts. Before it, an init container prepares the
job there (pod 0) or waits until pod 0 has (the others). A failed rank fails the whole Job at once:
the ranks of a collective cannot go on without it, so one pod retrying alone would only hang.
"""

from __future__ import annotations

import copy
import re
from pathlib import PurePosixPath
from typing import Any

import yaml

from gallery_trainer.multinode.plan import DEFAULT_MASTER_PORT, PlanError, launch_plan
from gallery_trainer.spec import JobSpec, NodeSpec

JOBS_MOUNT = PurePosixPath("/var/lib/gallery/jobs")
SPEC_MOUNT = PurePosixPath("/etc/gallery")
SPEC_KEY = "job.yaml"
GPU_RESOURCE = "nvidia.com/gpu"
RANKS_CONTAINER = "ranks"
INDEX_ENV = "JOB_COMPLETION_INDEX"
RUN_AS = 10001
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def job_name(job_id: str) -> str:
    """The Job's (and Service's) name for a training job id: `train-<id>`."""
    return f"train-{job_id}"


def indexed_job(
    spec: JobSpec,
    job_id: str,
    image: str,
    workdir_claim: str,
    namespace: str,
    *,
    port: int = DEFAULT_MASTER_PORT,
    gpus: bool | None = None,
    memory_per_rank_gib: int = 4,
    settings_secret: str | None = None,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """The ConfigMap, headless Service and Indexed Job that train `spec` on Kubernetes, one pod per node.

    `engine.nodes` gives the number of pods and the ranks (`slots`) of each, which must all be equal (one
    pod template); without nodes the job is one pod with `engine.ranks` ranks. `gpus` asks each pod for
    one GPU per rank (default: when `engine.backend` is nccl). The workdir is `<claim>/<job_id>`, so a
    trainer whose jobs folder is the same claim finds it. `settings_secret` names a Secret of GALLERY_*
    variables (the artifact store for data URIs). With `resume` the ranks continue from the workdir's
    latest checkpoint (apply again after a failure). Raises PlanError naming what is wrong.
    """
    name = job_name(job_id)
    nodes = spec.engine.nodes or [NodeSpec(host="node-0", slots=spec.engine.ranks)]
    _check(spec, name, nodes, image, workdir_claim, namespace, memory_per_rank_gib)
    gpus = _wants_gpus(spec.engine.backend, gpus)
    slots = nodes[0].slots
    hosts = [NodeSpec(host=f"{name}-{index}.{name}", slots=slots) for index in range(len(nodes))]
    # the pods' own names replace the spec's hosts, and every pod starts its own launcher
    engine = spec.engine.model_copy(update={"nodes": hosts, "hostfile": None, "launcher": "per_node"})
    pod_spec = spec.model_copy(update={"engine": engine})
    workdir = JOBS_MOUNT / job_id
    plan = launch_plan(pod_spec, workdir, port, resume=resume, program=["deepspeed"])
    labels = {
        "app.kubernetes.io/name": "gallery-trainer",
        "app.kubernetes.io/component": "training",
        "app.kubernetes.io/part-of": "modelgallery",
        "app.kubernetes.io/instance": name,
        "modelgallery.io/training-job": job_id,
    }

    def meta() -> dict[str, Any]:
        return {"name": name, "namespace": namespace, "labels": dict(labels)}

    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(),
        "data": {SPEC_KEY: yaml.safe_dump(pod_spec.model_dump(mode="json", exclude_defaults=True), sort_keys=False)},
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(),
        "spec": {
            "clusterIP": "None",
            "selector": {"app.kubernetes.io/instance": name},
            # pods must resolve each other while the rendezvous runs, before anything reports ready
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }
    # every pod runs node 0's command with its own index as the node rank (Kubernetes expands $(VAR))
    ranks_command = list(plan.nodes[0].command or ())
    ranks_command[ranks_command.index("--node_rank") + 1] = f"$({INDEX_ENV})"
    env = [
        _index_env(),
        # the root filesystem is read-only: caches and the gallery home go to the /tmp emptyDir
        {"name": "HOME", "value": "/tmp"},
        {"name": "GALLERY_HOME", "value": "/tmp/gallery"},
        # each rank is granted one core; torch would otherwise start a thread per core of the machine
        {"name": "OMP_NUM_THREADS", "value": "1"},
    ]
    env += [{"name": key, "value": value} for key, value in plan.env.items()]
    prepare = [
        "python", "-m", "gallery_trainer.multinode", str(SPEC_MOUNT / SPEC_KEY),
        "--job-id", job_id, "--workdir", str(workdir), "--port", str(port),
        "--prepare", "--node-rank", f"$({INDEX_ENV})",
    ]  # fmt: skip
    memory = f"{memory_per_rank_gib * slots}Gi"
    ranks_resources: dict[str, Any] = {
        "requests": {"cpu": str(slots), "memory": memory},
        "limits": {"memory": memory},
    }
    if gpus:
        ranks_resources["requests"][GPU_RESOURCE] = str(slots)
        ranks_resources["limits"][GPU_RESOURCE] = str(slots)
    env_from = [{"secretRef": {"name": settings_secret}}] if settings_secret else None
    mounts: list[dict[str, Any]] = [
        {"name": "jobs", "mountPath": str(JOBS_MOUNT)},
        {"name": "spec", "mountPath": str(SPEC_MOUNT), "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "jobs", "persistentVolumeClaim": {"claimName": workdir_claim}},
        {"name": "spec", "configMap": {"name": name}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if gpus:
        # NCCL moves data between the ranks of a pod through shared memory; the runtime's default is 64 MiB
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory"}})
    prepare_resources = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}
    pod = {
        "metadata": {"labels": dict(labels)},
        "spec": {
            "subdomain": name,
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": RUN_AS,
                "runAsGroup": RUN_AS,
                "fsGroup": RUN_AS,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "initContainers": [
                _container("prepare", image, prepare, env, env_from, mounts, prepare_resources, port=None)
            ],
            "containers": [
                _container(RANKS_CONTAINER, image, ranks_command, env, env_from, mounts, ranks_resources, port=port)
            ],
            "volumes": volumes,
        },
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta(),
        "spec": {
            "completionMode": "Indexed",
            "completions": len(hosts),
            "parallelism": len(hosts),
            "backoffLimit": 0,
            "podFailurePolicy": {
                "rules": [
                    # an evicted or preempted pod is replaced instead of failing the job outright
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                    {
                        "action": "FailJob",
                        "onExitCodes": {"containerName": RANKS_CONTAINER, "operator": "NotIn", "values": [0]},
                    },
                ]
            },
            "template": pod,
        },
    }
    return [config_map, service, job]


def _index_env() -> dict[str, Any]:
    # the Job controller sets it too; declaring it makes the $(JOB_COMPLETION_INDEX) in the commands explicit
    path = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    return {"name": INDEX_ENV, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _container(
    name: str,
    image: str,
    command: list[str],
    env: list[dict[str, Any]],
    env_from: list[dict[str, Any]] | None,
    mounts: list[dict[str, Any]],
    resources: dict[str, Any],
    *,
    port: int | None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "command": command,
        "workingDir": "/tmp",
        # copies: objects shared between containers would come out as YAML anchors and aliases
        "env": copy.deepcopy(env),
        "resources": resources,
        "volumeMounts": copy.deepcopy(mounts),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if env_from:
        container["envFrom"] = env_from
    if port is not None:
        container["ports"] = [{"name": "rendezvous", "containerPort": port, "protocol": "TCP"}]
    return container


def _wants_gpus(backend: str, gpus: bool | None) -> bool:
    if gpus is None:
        return backend == "nccl"
    if gpus and backend == "gloo":
        raise PlanError("engine.backend: gloo trains on the CPU; ask for GPUs with backend nccl or auto")
    if not gpus and backend == "nccl":
        raise PlanError("engine.backend: nccl needs GPUs; use backend gloo or auto for CPU pods")
    return gpus


def _check(
    spec: JobSpec,
    name: str,
    nodes: list[NodeSpec],
    image: str,
    claim: str,
    namespace: str,
    memory_per_rank_gib: int,
) -> None:
    problems = []
    if spec.engine.kind != "deepspeed":
        problems.append("engine.kind: a Kubernetes training job runs the DeepSpeed launcher; use kind deepspeed")
    if spec.engine.hostfile:
        problems.append("engine.hostfile: the pods are the nodes; give engine.nodes (one pod per node) instead")
    if len({node.slots for node in nodes}) > 1:
        counts = ", ".join(str(node.slots) for node in nodes)
        problems.append(
            f"engine.nodes: every pod has the same resources, so every node needs the same slots ({counts})"
        )
    # pod hostnames are `<job>-<index>`, and a hostname is one DNS label (63 characters)
    longest = f"{name}-{len(nodes) - 1}"
    if not _DNS_LABEL.match(longest) or len(longest) > 63:
        problems.append(
            f"job_id: {name!r} must be lowercase letters, digits and '-' and short enough that {longest!r} "
            "fits in 63 characters"
        )
    if not image.strip() or any(ch.isspace() for ch in image):
        problems.append(f"image: {image!r} is not a container image reference")
    if not _DNS_SUBDOMAIN.match(claim) or len(claim) > 253:
        problems.append(f"claim: {claim!r} is not a PersistentVolumeClaim name")
    if not _DNS_LABEL.match(namespace) or len(namespace) > 63:
        problems.append(f"namespace: {namespace!r} is not a namespace name")
    if memory_per_rank_gib < 1:
        problems.append("memory_per_rank_gib: must be at least 1")
    if problems:
        raise PlanError("; ".join(problems))
