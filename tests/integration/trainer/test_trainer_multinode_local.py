"""Multi-node plans run for real on this one machine: two "nodes" (two host names of this machine), each
starting its own DeepSpeed launcher from the plan, join one world of ranks over gloo; and a one-node
per_node job runs through the trainer's own pipeline. Tiny iris MLPs."""

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gallery_trainer.engine.distributed import free_port
from gallery_trainer.multinode import launch_plan
from gallery_trainer.multinode.__main__ import prepare_workdir
from gallery_trainer.pipeline import run_job
from gallery_trainer.spec import JobSpec, parse_spec

TRAIN_EXAMPLES = 90  # iris, 60 % of 150
RANK_TIMEOUT_S = 300


def iris_spec(nodes: list[dict[str, Any]]) -> JobSpec:
    return parse_spec(
        {
            "name": "iris-mlp",
            "data": {"source": "builtin", "name": "iris"},
            "preparation": {"split": {"train": 0.6, "validation": 0.2, "test": 0.2, "seed": 1}},
            "model": {"hidden": [8]},
            "training": {"epochs": 2, "batch_size": 8, "learning_rate": 0.05},
            "engine": {
                "ranks": sum(node["slots"] for node in nodes),
                "backend": "gloo",
                "launcher": "per_node",
                "nodes": nodes,
            },
        }
    )


def run_nodes(commands: list[list[str]], workdir: Path) -> list[int]:
    """Start every node's command at once, as separate machines would, and wait for all of them."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = []
    try:
        for index, command in enumerate(commands):
            with open(workdir / f"node{index}.log", "wb") as log:
                processes.append(
                    subprocess.Popen(
                        command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )
        return [process.wait(timeout=RANK_TIMEOUT_S) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_two_nodes_started_from_their_own_commands_train_as_one_world(tmp_path: Path) -> None:
    spec = iris_spec([{"host": "127.0.0.1", "slots": 1}, {"host": "localhost", "slots": 1}])
    port = free_port()
    prepare_workdir(spec, tmp_path, port, 0, wait_seconds=0, say=lambda line: None)
    plan = launch_plan(spec, tmp_path, port)
    assert run_nodes([list(node.command or ()) for node in plan.nodes], tmp_path) == [0, 0]

    result = json.loads((tmp_path / "result.json").read_text())
    assert (result["world_size"], result["data_parallel"], result["epochs_run"]) == (2, 2, 2)
    assert (tmp_path / "weights.safetensors").is_file()
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # one optimizer step takes a micro-batch from each node's rank
    per_epoch = TRAIN_EXAMPLES // (8 * 2)
    assert [line["step"] for line in steps if line["kind"] == "step"] == list(range(1, 2 * per_epoch + 1))
    for index in (0, 1):
        log = (tmp_path / f"node{index}.log").read_text()
        assert f"nnodes=2, num_local_procs=1, node_rank={index}" in log


@pytest.mark.slow
def test_a_one_node_per_node_job_runs_through_the_trainer_pipeline(tmp_path: Path) -> None:
    outputs = run_job(iris_spec([{"host": "127.0.0.1", "slots": 2}]), tmp_path)
    assert outputs.engine == "deepspeed" and outputs.metrics["epochs_run"] == 2
    assert outputs.metrics["onnx_parity_max_abs_diff"] < 1e-4
    launched = (tmp_path / "train.log").read_text().splitlines()[0]
    assert "--no_ssh --node_rank 0 --num_nodes 1 --master_addr 127.0.0.1" in launched
    assert json.loads(outputs.files["spec"].read_text())["engine"]["world_size"] == 2
