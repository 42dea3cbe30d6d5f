"""Launch plans for a job whose ranks run on several machines.

A plan holds what the DeepSpeed launcher needs there: the hostfile (`host slots=N` lines, written into
the job's workdir), the master address (the first node), where each rank runs, the environment of
every rank and the command(s) to start. With the `ssh` launcher one command on the launching machine
reaches every node over passwordless SSH (pdsh); with `per_node` every node runs its own launcher with
`--no_ssh --node_rank R`. Either way the workdir must be on storage every node mounts at the same path.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath, PurePosixPath
from typing import Any

from gallery_trainer.launcher import WORKER_MODULE, deepspeed_launcher
from gallery_trainer.spec import JobSpec

HOSTFILE = "hostfile"
# the DeepSpeed runner reads KEY=VALUE lines from this file in its working directory (the workdir) and
# exports them to every node it reaches over ssh
DEEPSPEED_ENV_FILE = ".deepspeed_env"
DEFAULT_MASTER_PORT = 29500
INTERFACE_VARIABLES = {
    "nccl": ("NCCL_SOCKET_IFNAME",),
    "gloo": ("GLOO_SOCKET_IFNAME",),
    "auto": ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"),
}


class PlanError(ValueError):
    """A job that cannot be planned for several machines; the message names the field to change."""


@dataclass(frozen=True)
class RankPlace:
    """Where one rank sits: its global and local rank, its pipeline stage and data-parallel rank."""

    rank: int
    local_rank: int
    stage: int
    data_rank: int


@dataclass(frozen=True)
class NodePlan:
    """One machine of the plan; `command` is what it runs itself (per_node launcher only)."""

    node_rank: int
    host: str
    slots: int
    ranks: tuple[RankPlace, ...]
    command: tuple[str, ...] | None


@dataclass(frozen=True)
class LaunchPlan:
    """How to start every rank of a multi-node job; `shared_workdir_required` is always true."""

    launcher: str
    workdir: PurePosixPath
    hostfile_path: PurePosixPath
    hostfile: str
    master_addr: str
    master_port: int
    world_size: int
    data_parallel: int
    pipeline_stages: int
    backend: str
    env: dict[str, str]
    nodes: tuple[NodePlan, ...]
    ssh_command: tuple[str, ...] | None
    notes: tuple[str, ...]
    shared_workdir_required: bool = True

    def launcher_command(self) -> list[str]:
        """The one command that starts the whole job from this machine.

        That is the ssh command, or node 0's command when a per_node plan has a single node; a per_node
        plan over several machines has no such command (PlanError): each node starts its own.
        """
        if self.ssh_command is not None:
            return list(self.ssh_command)
        if len(self.nodes) == 1 and self.nodes[0].command is not None:
            return list(self.nodes[0].command)
        raise PlanError(
            f"engine.launcher: per_node starts each of the {len(self.nodes)} nodes by itself (by hand or as a "
            "Kubernetes Indexed Job: python -m gallery_trainer.multinode); use launcher ssh to start them all "
            "from the trainer"
        )

    def write(self) -> None:
        """Write the hostfile and the ranks' environment file into the workdir (which must exist)."""
        with open(self.hostfile_path, "w", encoding="utf-8") as out:
            out.write(self.hostfile)
        with open(self.workdir / DEEPSPEED_ENV_FILE, "w", encoding="utf-8") as out:
            out.write("".join(f"{key}={value}\n" for key, value in self.env.items()))

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain data (JSON and YAML friendly)."""
        return {
            "launcher": self.launcher,
            "workdir": str(self.workdir),
            "shared_workdir_required": self.shared_workdir_required,
            "hostfile_path": str(self.hostfile_path),
            "hostfile": self.hostfile,
            "master_addr": self.master_addr,
            "master_port": self.master_port,
            "world_size": self.world_size,
            "data_parallel": self.data_parallel,
            "pipeline_stages": self.pipeline_stages,
            "backend": self.backend,
            "env": dict(self.env),
            "nodes": [
                {
                    "node_rank": node.node_rank,
                    "host": node.host,
                    "slots": node.slots,
                    "ranks": [vars(place) for place in node.ranks],
                    "command": list(node.command) if node.command else None,
                }
                for node in self.nodes
            ],
            "ssh_command": list(self.ssh_command) if self.ssh_command else None,
            "notes": list(self.notes),
        }


def rank_places(slots: Sequence[int], pipeline_stages: int) -> list[list[RankPlace]]:
    """Each node's ranks, numbered node by node as the DeepSpeed launcher does.

    DeepSpeed's pipeline topology puts the data-parallel axis innermost (rank = stage x data-parallel
    size + data rank), so a stage's data-parallel group sits on neighbouring ranks, mostly one node.
    """
    world = sum(slots)
    data_parallel = world // pipeline_stages
    places, rank = [], 0
    for count in slots:
        node = []
        for local in range(count):
            node.append(RankPlace(rank, local, rank // data_parallel, rank % data_parallel))
            rank += 1
        places.append(node)
    return places


def rank_environment(backend: str, master_addr: str, master_port: int) -> dict[str, str]:
    """The variables every rank gets, besides the RANK/LOCAL_RANK/WORLD_SIZE the launcher sets."""
    env = {"MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port), "PYTHONUNBUFFERED": "1"}
    if backend in ("nccl", "auto"):
        # without it a failed NCCL collective says nothing about which link or peer broke
        env["NCCL_DEBUG"] = "WARN"
    return env


def launch_plan(
    spec: JobSpec,
    workdir: PurePath | str,
    port: int = DEFAULT_MASTER_PORT,
    *,
    resume: bool = False,
    program: Sequence[str] | None = None,
) -> LaunchPlan:
    """The plan for `spec`'s `engine.nodes`, with the job prepared in `workdir` and rank 0 on `port`.

    `program` is the DeepSpeed launcher to name in the commands (default: this environment's). Raises
    PlanError when the spec names no nodes, or `workdir` is not an absolute path (every node reads it).
    """
    engine = spec.engine
    if engine.kind != "deepspeed" or not engine.nodes:
        raise PlanError("engine.nodes: a launch plan needs kind deepspeed and the list of nodes")
    workdir = PurePosixPath(workdir)
    if not workdir.is_absolute():
        raise PlanError(f"workdir: {workdir} must be an absolute path, the same on every node")
    if not 1 <= port <= 65535:
        raise PlanError(f"port: {port} is not a TCP port")
    program = list(program) if program is not None else deepspeed_launcher()
    hostfile_path = workdir / HOSTFILE
    master_addr = engine.nodes[0].host
    worker = ["--module", WORKER_MODULE, "--workdir", str(workdir), *(["--resume"] if resume else [])]
    rendezvous = ["--master_addr", master_addr, "--master_port", str(port)]
    places = rank_places([node.slots for node in engine.nodes], engine.pipeline_stages)
    nodes = tuple(
        NodePlan(
            node_rank=index,
            host=node.host,
            slots=node.slots,
            ranks=tuple(places[index]),
            command=(
                tuple(node_command(program, hostfile_path, str(index), len(engine.nodes), rendezvous, worker))
                if engine.launcher == "per_node"
                else None
            ),
        )
        for index, node in enumerate(engine.nodes)
    )
    ssh_command = None
    if engine.launcher == "ssh":
        # --force_multi: even a one-node plan goes over ssh to its host instead of running here
        ssh_command = (*program, "--hostfile", str(hostfile_path), "--force_multi", *rendezvous, *worker)
    return LaunchPlan(
        launcher=engine.launcher,
        workdir=workdir,
        hostfile_path=hostfile_path,
        hostfile="".join(f"{node.host} slots={node.slots}\n" for node in engine.nodes),
        master_addr=master_addr,
        master_port=port,
        world_size=engine.ranks,
        data_parallel=engine.data_parallel,
        pipeline_stages=engine.pipeline_stages,
        backend=engine.backend,
        env=rank_environment(engine.backend, master_addr, port),
        nodes=nodes,
        ssh_command=ssh_command,
        notes=tuple(_notes(spec, workdir, master_addr, port)),
    )


def node_command(
    program: Sequence[str],
    hostfile: PurePosixPath,
    node_rank: str,
    node_count: int,
    rendezvous: Sequence[str],
    worker: Sequence[str],
) -> list[str]:
    """One node's own launcher (per_node): it reads the hostfile only to number the ranks."""
    return [
        *program,
        "--hostfile",
        str(hostfile),
        "--no_ssh",
        "--node_rank",
        node_rank,
        "--num_nodes",
        str(node_count),
        *rendezvous,
        *worker,
    ]


def _notes(spec: JobSpec, workdir: PurePosixPath, master_addr: str, port: int) -> list[str]:
    engine = spec.engine
    interfaces = " and ".join(INTERFACE_VARIABLES[engine.backend])
    notes = [
        f"the workdir {workdir} must be on storage every node mounts at this same path (NFS, a ReadWriteMany "
        "volume): every rank reads the prepared splits there and rank 0 writes the weights",
        f"every node must reach {master_addr} on TCP port {port} (rank 0's rendezvous) and the other nodes on "
        "the ports the collectives open",
        f"when a node has several network interfaces, set {interfaces} to the one the nodes share (e.g. eth0) "
        "on every node",
    ]
    if engine.launcher == "ssh":
        notes += [
            "the launching machine runs the ssh command from the workdir; it needs pdsh and passwordless SSH "
            "to every node, and DeepSpeed exports the variables of .deepspeed_env there (add your own, such "
            f"as {INTERFACE_VARIABLES[engine.backend][0]}, to ~/.deepspeed_env on the launching machine)",
            f"every node runs {sys.executable} (the launching machine's Python) at the same path",
        ]
    else:
        notes.append(
            "prepare the job in the workdir first (python -m gallery_trainer.multinode SPEC --prepare), then "
            "start each node's command on that node, in any order"
        )
    return notes
