"""Multi-node launch plans: spec validation, the hostfile, the exact launcher commands, each rank's place,
the ranks' environment, the Kubernetes Indexed Job and the `python -m gallery_trainer.multinode` script."""

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gallery_trainer import launcher
from gallery_trainer.launcher import deepspeed_launcher, launch_command
from gallery_trainer.multinode import PlanError, indexed_job, launch_plan
from gallery_trainer.multinode.__main__ import main as multinode_main
from gallery_trainer.multinode.__main__ import prepare_workdir
from gallery_trainer.pipeline import TrainingFailed, choose_engine
from gallery_trainer.spec import SpecError, parse_spec

WORKDIR = Path("/shared/jobs/j1")
DS = ["deepspeed"]


def spec_with(engine: dict[str, Any], **sections: Any) -> Any:
    doc = {"name": "digits-mlp", "data": {"source": "builtin", "name": "digits"}, "engine": engine, **sections}
    return parse_spec(doc)


def two_nodes(launcher: str = "ssh", backend: str = "auto", **engine: Any) -> Any:
    nodes = [{"host": "gpu-a", "slots": 2}, {"host": "gpu-b", "slots": 2}]
    return spec_with({"ranks": 4, "nodes": nodes, "launcher": launcher, "backend": backend, **engine})


def problems_of(engine: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as caught:
        spec_with(engine)
    return caught.value.problems


def test_node_lists_are_checked_and_every_problem_is_named() -> None:
    problems = problems_of(
        {
            "ranks": 5,
            "hostfile": "/etc/hosts.ds",
            "nodes": [{"host": "gpu-a", "slots": 2}, {"host": "gpu-a", "slots": 2}],
        }
    )
    assert "engine.nodes: give either nodes or hostfile, not both" in problems
    assert "engine.nodes: each host may appear once, and gpu-a appears more than once" in problems
    assert "engine.ranks: must equal the nodes' slots in all (4), not 5" in problems
    bad = problems_of({"nodes": [{"host": "gpu a", "slots": 0}]})
    assert any(p.startswith("engine.nodes.0.host: 'gpu a' is not a host name") for p in bad), bad
    assert any(p.startswith("engine.nodes.0.slots:") for p in bad), bad
    assert problems_of({"launcher": "per_node"}) == [
        "engine.launcher: per_node needs engine.nodes, so each node's rank and command are known"
    ]
    assert "engine.nodes: several machines need kind deepspeed" in problems_of(
        {"kind": "ddp", "ranks": 2, "nodes": [{"host": "gpu-a", "slots": 2}]}
    )


def test_the_hostfile_lists_each_node_with_its_slots_and_is_written_into_the_workdir(tmp_path: Path) -> None:
    plan = launch_plan(two_nodes(), tmp_path, 29500)
    assert plan.hostfile == "gpu-a slots=2\ngpu-b slots=2\n"
    assert plan.hostfile_path == tmp_path / "hostfile"
    assert plan.master_addr == "gpu-a" and plan.world_size == 4 and plan.shared_workdir_required is True
    plan.write()
    assert (tmp_path / "hostfile").read_text() == "gpu-a slots=2\ngpu-b slots=2\n"
    # DeepSpeed's runner exports these lines to every node it reaches over ssh
    assert (tmp_path / ".deepspeed_env").read_text().splitlines()[:2] == ["MASTER_ADDR=gpu-a", "MASTER_PORT=29500"]


def test_the_ssh_plan_is_one_runner_command_that_reaches_every_node() -> None:
    plan = launch_plan(two_nodes(), WORKDIR, 29501, program=DS)
    assert list(plan.ssh_command or ()) == [
        "deepspeed",
        "--hostfile", "/shared/jobs/j1/hostfile",
        "--force_multi",
        "--master_addr", "gpu-a",
        "--master_port", "29501",
        "--module", "gallery_trainer.rank",
        "--workdir", "/shared/jobs/j1",
    ]  # fmt: skip
    assert all(node.command is None for node in plan.nodes)
    assert plan.launcher_command() == list(plan.ssh_command or ())
    assert any("pdsh and passwordless SSH" in note for note in plan.notes)
    # without `program` the commands name this environment's DeepSpeed launcher
    default = launch_plan(two_nodes(), WORKDIR, 29501)
    assert list(default.ssh_command or ())[: len(deepspeed_launcher())] == deepspeed_launcher()


def test_the_per_node_plan_gives_each_node_its_own_launcher_command() -> None:
    plan = launch_plan(two_nodes("per_node"), WORKDIR, 29502, resume=True, program=DS)
    assert plan.ssh_command is None
    commands = [list(node.command or ()) for node in plan.nodes]
    assert commands[1] == [
        "deepspeed",
        "--hostfile", "/shared/jobs/j1/hostfile",
        "--no_ssh",
        "--node_rank", "1",
        "--num_nodes", "2",
        "--master_addr", "gpu-a",
        "--master_port", "29502",
        "--module", "gallery_trainer.rank",
        "--workdir", "/shared/jobs/j1",
        "--resume",
    ]  # fmt: skip
    assert commands[0][commands[0].index("--node_rank") + 1] == "0"
    assert [node.host for node in plan.nodes] == ["gpu-a", "gpu-b"]
    with pytest.raises(PlanError, match="per_node starts each of the 2 nodes by itself"):
        plan.launcher_command()


def test_the_ranks_environment_follows_the_backend() -> None:
    nccl = launch_plan(two_nodes(backend="nccl"), WORKDIR, 29500)
    gloo = launch_plan(two_nodes(backend="gloo"), WORKDIR, 29500)
    common = {"MASTER_ADDR": "gpu-a", "MASTER_PORT": "29500", "PYTHONUNBUFFERED": "1"}
    assert nccl.env == {**common, "NCCL_DEBUG": "WARN"} and nccl.backend == "nccl"
    assert gloo.env == common and gloo.backend == "gloo"
    # the network interface is the user's to pick; the plan says which variable sets it
    assert any("NCCL_SOCKET_IFNAME" in note for note in nccl.notes)
    assert any("GLOO_SOCKET_IFNAME" in note for note in gloo.notes)
    assert not any("NCCL_SOCKET_IFNAME" in note for note in gloo.notes)
    assert any("must be on storage every node mounts" in note for note in gloo.notes)


def test_ranks_are_numbered_node_by_node_with_data_parallel_innermost() -> None:
    plan = launch_plan(two_nodes(pipeline_stages=2), WORKDIR, 29500)
    assert (plan.world_size, plan.pipeline_stages, plan.data_parallel) == (4, 2, 2)
    layout = [[(p.rank, p.local_rank, p.stage, p.data_rank) for p in node.ranks] for node in plan.nodes]
    # each pipeline stage's data-parallel group stays on one node; activations cross between nodes
    assert layout == [[(0, 0, 0, 0), (1, 1, 0, 1)], [(2, 0, 1, 0), (3, 1, 1, 1)]]
    uneven = spec_with(
        {"ranks": 4, "pipeline_stages": 2, "nodes": [{"host": "a", "slots": 3}, {"host": "b", "slots": 1}]}
    )
    places = [[(p.rank, p.stage) for p in node.ranks] for node in launch_plan(uneven, WORKDIR, 29500).nodes]
    assert places == [[(0, 0), (1, 0), (2, 1)], [(3, 1)]]


def test_a_plan_needs_nodes_and_an_absolute_workdir() -> None:
    with pytest.raises(PlanError, match=r"engine\.nodes: a launch plan needs"):
        launch_plan(spec_with({"ranks": 2}), WORKDIR, 29500)
    with pytest.raises(PlanError, match="must be an absolute path, the same on every node"):
        launch_plan(two_nodes(), "jobs/j1", 29500)


def test_launch_command_follows_the_plan_for_specs_with_nodes(tmp_path: Path) -> None:
    one_node = spec_with({"ranks": 2, "launcher": "per_node", "nodes": [{"host": "127.0.0.1", "slots": 2}]})
    command = launch_command(one_node, tmp_path, 29610)
    assert command == launch_plan(one_node, tmp_path, 29610).launcher_command()
    assert "--no_ssh" in command and (tmp_path / "hostfile").read_text() == "127.0.0.1 slots=2\n"
    ssh = launch_command(two_nodes(), tmp_path, 29611, resume=True)
    assert "--force_multi" in ssh and ssh[-1] == "--resume"
    assert (tmp_path / "hostfile").read_text() == "gpu-a slots=2\ngpu-b slots=2\n"
    with pytest.raises(TrainingFailed, match="use launcher ssh to start them all"):
        launch_command(two_nodes("per_node"), tmp_path, 29612)


def test_several_machines_do_not_fall_back_to_ddp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "deepspeed_import_error", lambda: "the deepspeed package is not installed")
    with pytest.raises(TrainingFailed, match="several machines need DeepSpeed"):
        choose_engine(two_nodes())


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for obj in objects}


def test_the_indexed_job_is_valid_kubernetes_with_one_pod_per_node() -> None:
    objects = indexed_job(two_nodes(backend="nccl"), "j1", "registry.local/trainer:1", "gallery-jobs", "ml")
    for obj in objects:
        kubernetes_validate.validate(obj, "1.37.0", strict=True)
    kinds = by_kind(objects)
    assert set(kinds) == {"ConfigMap", "Service", "Job"}
    job, service = kinds["Job"]["spec"], kinds["Service"]
    assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"] == 2
    assert job["backoffLimit"] == 0 and job["podFailurePolicy"]["rules"]
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsNonRoot"] is True
    # pod i is <job>-<i>.<service>: the headless Service is the pods' subdomain and selects them
    assert service["spec"]["clusterIP"] == "None" and pod["subdomain"] == service["metadata"]["name"] == "train-j1"
    assert service["spec"]["selector"].items() <= job["template"]["metadata"]["labels"].items()
    ranks = pod["containers"][0]
    command = ranks["command"]
    assert command[0] == "deepspeed" and "--no_ssh" in command
    assert command[command.index("--node_rank") + 1] == "$(JOB_COMPLETION_INDEX)"
    assert command[command.index("--master_addr") + 1] == "train-j1-0.train-j1"
    assert command[command.index("--workdir") + 1] == "/var/lib/gallery/jobs/j1"
    env = {item["name"]: item for item in ranks["env"]}
    assert "job-completion-index" in env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert env["MASTER_ADDR"]["value"] == "train-j1-0.train-j1" and env["NCCL_DEBUG"]["value"] == "WARN"
    assert ranks["resources"]["limits"]["nvidia.com/gpu"] == "2"
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["jobs"]["persistentVolumeClaim"]["claimName"] == "gallery-jobs"
    # the spec the init container prepares from names the pods as the nodes
    mounted = parse_spec(kinds["ConfigMap"]["data"]["job.yaml"])
    assert [node.host for node in mounted.engine.nodes or []] == ["train-j1-0.train-j1", "train-j1-1.train-j1"]
    assert mounted.engine.launcher == "per_node"
    prepare = pod["initContainers"][0]["command"]
    assert prepare[:3] == ["python", "-m", "gallery_trainer.multinode"] and "--prepare" in prepare


def test_cpu_pods_ask_for_cores_and_no_gpus() -> None:
    spec = spec_with({"ranks": 3, "backend": "gloo"})
    objects = indexed_job(spec, "cpu1", "trainer:1", "jobs", "default", settings_secret="gallery-settings")
    for obj in objects:
        kubernetes_validate.validate(obj, "1.37.0", strict=True)
    job = by_kind(objects)["Job"]["spec"]
    assert job["completions"] == 1
    ranks = job["template"]["spec"]["containers"][0]
    assert ranks["resources"]["requests"]["cpu"] == "3" and "nvidia.com/gpu" not in ranks["resources"]["limits"]
    assert ranks["envFrom"] == [{"secretRef": {"name": "gallery-settings"}}]


def test_the_indexed_job_refuses_what_kubernetes_cannot_run() -> None:
    uneven = spec_with({"ranks": 3, "nodes": [{"host": "a", "slots": 2}, {"host": "b", "slots": 1}]})
    with pytest.raises(PlanError, match=r"every node needs the same slots \(2, 1\)"):
        indexed_job(uneven, "j1", "trainer:1", "jobs", "default")
    with pytest.raises(PlanError, match="job_id: 'train-J_1' must be lowercase"):
        indexed_job(two_nodes(), "J_1", "trainer:1", "jobs", "default")
    with pytest.raises(PlanError, match="gloo trains on the CPU"):
        indexed_job(two_nodes(backend="gloo"), "j1", "trainer:1", "jobs", "default", gpus=True)
    with pytest.raises(PlanError, match=r"engine\.hostfile: the pods are the nodes"):
        indexed_job(spec_with({"ranks": 2, "hostfile": "/etc/h"}), "j1", "trainer:1", "jobs", "default")


DIGITS_WITH_NODES = """\
name: digits-mlp
data: {source: builtin, name: digits}
model: {hidden: [128, 64]}
training: {epochs: 8, batch_size: 32}
engine:
  kind: deepspeed
  ranks: 4
  launcher: per_node
  nodes:
    - {host: gpu-a, slots: 2}
    - {host: gpu-b, slots: 2}
"""


def test_the_script_prints_the_plan_a_user_launches_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec_file = tmp_path / "digits.yaml"
    spec_file.write_text(DIGITS_WITH_NODES)
    assert multinode_main([str(spec_file), "--workdir", "/shared/jobs/d1", "--port", "29700"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[lines.index("# hostfile (/shared/jobs/d1/hostfile):") + 1 :][:2] == [
        "gpu-a slots=2",
        "gpu-b slots=2",
    ]
    commands = [line for line in lines if "--no_ssh" in line]
    assert len(commands) == 2
    assert "--node_rank 1 --num_nodes 2 --master_addr gpu-a --master_port 29700" in commands[1]
    assert "# node 1: gpu-b, ranks 2-3, stage 0" in lines

    assert multinode_main([str(spec_file), "--workdir", "/shared/jobs/d1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["world_size"] == 4

    args = [str(spec_file), "--job-id", "d1", "--kubernetes", "--image", "trainer:1", "--claim", "jobs"]
    assert multinode_main(args) == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [doc["kind"] for doc in documents] == ["ConfigMap", "Service", "Job"]
    assert documents[2]["spec"]["completions"] == 2


def test_the_script_says_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text(DIGITS_WITH_NODES.replace("ranks: 4", "ranks: 3"))
    assert multinode_main([str(spec_file)]) == 2
    assert "engine.ranks: must equal the nodes' slots in all (4), not 3" in capsys.readouterr().err
    spec_file.write_text(DIGITS_WITH_NODES)
    args = [str(spec_file), "--job-id", "Bad_Id", "--kubernetes", "--image", "trainer:1", "--claim", "jobs"]
    assert multinode_main(args) == 2
    assert "job_id: 'train-Bad_Id' must be lowercase" in capsys.readouterr().err


def test_node_zero_prepares_the_workdir_and_the_others_wait_for_it(tmp_path: Path) -> None:
    spec = parse_spec(DIGITS_WITH_NODES.replace("digits", "iris", 2).replace("128, 64", "8"))
    said: list[str] = []
    with pytest.raises(PlanError, match="node 0 did not prepare"):
        prepare_workdir(spec, tmp_path, 29500, 1, wait_seconds=0.1, say=said.append)
    prepare_workdir(spec, tmp_path, 29500, 0, wait_seconds=0, say=said.append)
    assert (tmp_path / "hostfile").read_text() == "gpu-a slots=2\ngpu-b slots=2\n"
    assert {"job.json", "train_split.npz", "prepared.json"} <= {path.name for path in tmp_path.iterdir()}
    prepare_workdir(spec, tmp_path, 29500, 1, wait_seconds=0.1, say=said.append)
    prepare_workdir(spec, tmp_path, 29500, 0, wait_seconds=0, say=said.append)
    assert said[-2:] == [f"{tmp_path} is prepared", f"{tmp_path} already holds this job's preparation"]
