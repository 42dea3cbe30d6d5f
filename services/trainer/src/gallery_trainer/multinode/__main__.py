"""`python -m gallery_trainer.multinode SPEC.yaml`: print a multi-node job's launch plan or its Kubernetes
objects, or prepare its workdir so the nodes can start.

    python -m gallery_trainer.multinode job.yaml --workdir /shared/jobs/j1            # hostfile + commands
    python -m gallery_trainer.multinode job.yaml --workdir /shared/jobs/j1 --prepare  # splits + hostfile
    python -m gallery_trainer.multinode job.yaml --kubernetes --image IMG --claim PVC | kubectl apply -f -
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from gallery_common.artifacts import ArtifactStore, open_store
from gallery_common.settings import load_settings
from gallery_trainer.engine.job import JOB_FILE
from gallery_trainer.failures import TrainingFailed
from gallery_trainer.multinode.kubernetes import indexed_job
from gallery_trainer.multinode.plan import DEFAULT_MASTER_PORT, LaunchPlan, PlanError, launch_plan
from gallery_trainer.pipeline import PREPARED_FILE, prepare_job
from gallery_trainer.settings import TrainerSettings
from gallery_trainer.spec import JobSpec, SpecError, config_hash, parse_spec

WAIT_POLL_SECONDS = 1.0


class _ManifestDumper(yaml.SafeDumper):
    """Writes multi-line strings (the spec in the ConfigMap) as literal blocks a person can read."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_ManifestDumper.add_representer(str, _string)


def default_job_id(spec: JobSpec) -> str:
    """`<name>-<first 8 hex digits of the config hash>`, lowercased into a Kubernetes-safe name."""
    stem = re.sub(r"[^a-z0-9-]+", "-", spec.name.lower()).strip("-")[:40].rstrip("-")
    return f"{stem}-{config_hash(spec)[:8]}"


def render_plan(plan: LaunchPlan, spec: JobSpec, job_id: str) -> str:
    """The plan as text to read and paste: comments, the hostfile, the environment and the commands."""
    layout = f"{plan.world_size} ranks"
    if plan.pipeline_stages > 1:
        layout += f" = {plan.pipeline_stages} pipeline stages x {plan.data_parallel} data-parallel"
    lines = [
        f"# job {spec.name} ({job_id}): {layout} on {len(plan.nodes)} nodes, launcher {plan.launcher}, "
        f"backend {plan.backend}",
        f"# workdir, on storage every node mounts at this path: {plan.workdir}",
        f"# hostfile ({plan.hostfile_path}):",
        *plan.hostfile.splitlines(),
        "# environment of every rank:",
        *(f"{key}={value}" for key, value in plan.env.items()),
    ]
    for node in plan.nodes:
        ranks = f"{node.ranks[0].rank}-{node.ranks[-1].rank}" if node.slots > 1 else str(node.ranks[0].rank)
        stages = sorted({place.stage for place in node.ranks})
        lines.append(f"# node {node.node_rank}: {node.host}, ranks {ranks}, stage {', '.join(map(str, stages))}")
        if node.command:
            lines.append(shlex.join(node.command))
    if plan.ssh_command:
        lines += [
            "# on the launching machine:",
            f"cd {shlex.quote(str(plan.workdir))} && {shlex.join(plan.ssh_command)}",
        ]
    lines += [f"# note: {note}" for note in plan.notes]
    return "\n".join(lines) + "\n"


def prepare_workdir(
    spec: JobSpec,
    workdir: Path,
    port: int,
    node_rank: int,
    *,
    wait_seconds: float,
    say: Callable[[str], None],
) -> None:
    """Node 0 writes the hostfile and prepares the job in `workdir`; the others wait until it has.

    Raises PlanError when the wait runs out and TrainingFailed when the data cannot be prepared.
    """
    if node_rank == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        if spec.engine.nodes:
            # before the splits: a node that sees the job prepared starts its launcher, which reads the hostfile
            launch_plan(spec, workdir, port).write()
        if _prepared_for(spec, workdir):
            say(f"{workdir} already holds this job's preparation")
            return
        prepare_job(spec, workdir, _data_store(spec))
        say(f"prepared {workdir}")
        return
    deadline = time.monotonic() + wait_seconds
    say(f"waiting for node 0 to prepare {workdir}")
    while not _prepared_for(spec, workdir):
        if time.monotonic() > deadline:
            raise PlanError(f"node 0 did not prepare {workdir} within {wait_seconds:g} s")
        time.sleep(WAIT_POLL_SECONDS)
    say(f"{workdir} is prepared")


def _prepared_for(spec: JobSpec, workdir: Path) -> bool:
    try:
        summary = json.loads((workdir / PREPARED_FILE).read_text())
    except (OSError, ValueError):
        return False
    return summary.get("config_hash") == config_hash(spec) and (workdir / JOB_FILE).is_file()


def _data_store(spec: JobSpec) -> ArtifactStore | None:
    if spec.data.uri is None:
        return None
    settings = load_settings(TrainerSettings)
    return open_store(settings.resolved_artifact_root, settings)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gallery_trainer.multinode", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("spec", type=Path, help="the job spec (YAML or JSON) with engine.nodes")
    parser.add_argument("--job-id", help="names the workdir and the Kubernetes objects (default: name-hash)")
    parser.add_argument("--workdir", type=Path, help="the job folder on shared storage (default: ./JOB_ID)")
    parser.add_argument("--port", type=int, default=DEFAULT_MASTER_PORT, help="rank 0's rendezvous port")
    parser.add_argument("--resume", action="store_true", help="the ranks continue from the latest checkpoint")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    group = parser.add_argument_group("Kubernetes")
    group.add_argument("--kubernetes", action="store_true", help="print a headless Service and an Indexed Job")
    group.add_argument("--image", help="the trainer image every pod runs")
    group.add_argument("--claim", help="a ReadWriteMany PersistentVolumeClaim holding the jobs' workdirs")
    group.add_argument("--namespace", default="default")
    group.add_argument("--gpus", action=argparse.BooleanOptionalAction, default=None, help="one GPU per rank")
    group.add_argument("--memory-per-rank-gib", type=int, default=4)
    group.add_argument("--settings-secret", help="a Secret of GALLERY_* variables for the pods")
    group = parser.add_argument_group("preparing the workdir")
    group.add_argument("--prepare", action="store_true", help="node 0 prepares the workdir, the others wait")
    group.add_argument("--node-rank", type=int, default=0)
    group.add_argument("--wait-seconds", type=float, default=1800.0)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        spec = parse_spec(args.spec.read_bytes())
    except OSError as exc:
        parser.error(f"cannot read {args.spec}: {exc.strerror}")
    except SpecError as exc:
        print(f"error: {args.spec}: {exc}", file=sys.stderr)
        return 2
    job_id = args.job_id or default_job_id(spec)
    workdir = (args.workdir or Path(job_id)).resolve()
    try:
        if args.kubernetes:
            if not args.image or not args.claim:
                parser.error("--kubernetes needs --image and --claim")
            if args.workdir:
                parser.error("--workdir: a Kubernetes job's workdir is JOB_ID on the claim, set by --job-id")
            objects = indexed_job(
                spec,
                job_id,
                args.image,
                args.claim,
                args.namespace,
                port=args.port,
                gpus=args.gpus,
                memory_per_rank_gib=args.memory_per_rank_gib,
                settings_secret=args.settings_secret,
                resume=args.resume,
            )
            sys.stdout.write(yaml.dump_all(objects, Dumper=_ManifestDumper, sort_keys=False))
        elif args.prepare:
            prepare_workdir(spec, workdir, args.port, args.node_rank, wait_seconds=args.wait_seconds, say=print)
        else:
            plan = launch_plan(spec, workdir, args.port, resume=args.resume)
            text = json.dumps(plan.to_dict(), indent=2) + "\n" if args.json else render_plan(plan, spec, job_id)
            sys.stdout.write(text)
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
