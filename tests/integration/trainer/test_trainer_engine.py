"""Real training runs, their ranks started by the trainer: DeepSpeed with 1 rank, 2 data-parallel ranks and 2
pipeline stages, the DDP fallback, a failing spec, cancel-then-resume, and ranks taken from the standby pool.
Tiny digits MLPs."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from waiting import wait_for

from gallery_trainer import launcher
from gallery_trainer.pipeline import JobCancelled, JobOutputs, ProgressUpdate, TrainingFailed, run_job
from gallery_trainer.spec import parse_spec
from gallery_trainer.standby import StandbyRanks, standby

TRAIN_EXAMPLES = 1257  # digits, 70 % of 1797 after the stratified split
CHANCE = 0.1


def digits_spec(engine: dict[str, Any], **training: Any) -> Any:
    return parse_spec(
        {
            "name": "digits-mlp",
            "data": {"source": "builtin", "name": "digits"},
            "model": {"hidden": [32]},
            "training": {"epochs": 2, "batch_size": 32, "learning_rate": 0.005, **training},
            "engine": engine,
        }
    )


def metric_lines(workdir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def assert_trained(outputs: JobOutputs, workdir: Path, *, epochs: int, steps_per_epoch: int) -> None:
    assert outputs.metrics["test_accuracy"] > 5 * CHANCE
    assert outputs.metrics["val_accuracy"] > 5 * CHANCE
    assert outputs.metrics["onnx_parity_max_abs_diff"] < 1e-4
    assert outputs.metrics["epochs_run"] == epochs
    lines = metric_lines(workdir)
    steps = [line["step"] for line in lines if line["kind"] == "step"]
    # one writer: every optimizer step appears exactly once, in order
    assert steps == list(range(1, epochs * steps_per_epoch + 1))
    epoch_lines = [line for line in lines if line["kind"] == "epoch"]
    assert [line["epoch"] for line in epoch_lines] == list(range(1, epochs + 1))
    assert all(
        {"train_loss", "lr", "samples_per_sec", "val_loss", "val_accuracy"} <= line.keys() for line in epoch_lines
    )
    for role in ("weights", "spec", "onnx", "train_split", "validation_split", "test_split"):
        assert outputs.files[role].is_file(), role


def test_one_deepspeed_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extensions = tmp_path / "torch_extensions"  # nothing built here: as on a fresh installation
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(extensions))
    updates: list[ProgressUpdate] = []
    outputs = run_job(digits_spec({"ranks": 1}), tmp_path, on_progress=updates.append)
    # the rank ran as the only process, and one rank has nothing to all-reduce: no op was compiled for it
    assert "$ RANK=0 " + sys.executable + " -m gallery_trainer.rank" in (tmp_path / "train.log").read_text()
    assert not (extensions / "deepspeed_shm_comm").exists()
    assert_trained(outputs, tmp_path, epochs=2, steps_per_epoch=TRAIN_EXAMPLES // 32)
    assert outputs.engine == "deepspeed" and outputs.engine_note is None
    phases = [u.phase for u in updates]
    assert phases[0] == "preparing" and phases[-2:] == ["exporting", "done"]
    assert any(u.phase == "training" and u.step > 0 and "train_loss" in u.metrics for u in updates)
    stored = json.loads(outputs.files["spec"].read_text())
    assert stored["job"]["name"] == "digits-mlp" and stored["config_hash"] == outputs.config_hash
    assert stored["architecture"]["layers"][1] == {"index": 1, "type": "Linear", "in_features": 64, "out_features": 32}
    assert len(stored["preprocessing"]["mean"]) == 64
    assert outputs.signature.inputs[0].shape == [-1, 64] and outputs.signature.outputs[0].shape == [-1, 10]
    assert outputs.class_names == [str(d) for d in range(10)] and outputs.task == "classification"


@pytest.mark.slow
def test_two_data_parallel_ranks_with_zero(tmp_path: Path) -> None:
    outputs = run_job(digits_spec({"ranks": 2, "zero_stage": 1}), tmp_path)
    # each optimizer step takes one micro-batch from each rank
    assert_trained(outputs, tmp_path, epochs=2, steps_per_epoch=TRAIN_EXAMPLES // 64)
    engine = json.loads(outputs.files["spec"].read_text())["engine"]
    assert engine == {"engine": "deepspeed", "world_size": 2, "data_parallel": 2, "pipeline_stages": 1, "zero_stage": 1}


@pytest.mark.slow
def test_two_pipeline_stages(tmp_path: Path) -> None:
    outputs = run_job(digits_spec({"ranks": 2, "pipeline_stages": 2}, gradient_accumulation=2, batch_size=16), tmp_path)
    assert_trained(outputs, tmp_path, epochs=2, steps_per_epoch=TRAIN_EXAMPLES // 32)
    engine = json.loads(outputs.files["spec"].read_text())["engine"]
    assert engine["pipeline_stages"] == 2 and engine["data_parallel"] == 1


@pytest.mark.slow
def test_ddp_fallback_when_deepspeed_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "deepspeed_import_error", lambda: "the deepspeed package is not installed")
    outputs = run_job(digits_spec({"ranks": 2}), tmp_path)
    assert_trained(outputs, tmp_path, epochs=2, steps_per_epoch=TRAIN_EXAMPLES // 64)
    assert outputs.engine == "ddp"
    assert outputs.engine_note is not None and "DeepSpeed is unavailable" in outputs.engine_note
    log = (tmp_path / "train.log").read_text()
    assert "$ RANK=1 " + sys.executable + " -m gallery_trainer.rank" in log and "deepspeed.launcher" not in log


def test_a_batch_larger_than_the_data_fails_with_the_field(tmp_path: Path) -> None:
    with pytest.raises(TrainingFailed) as caught:
        run_job(digits_spec({"kind": "ddp"}, batch_size=2000), tmp_path)
    assert str(caught.value).startswith("training.batch_size: one optimizer step needs 2000 training examples")


def test_cancel_stops_the_ranks_and_resume_finishes_the_job(tmp_path: Path) -> None:
    spec = digits_spec({"kind": "ddp"}, epochs=8, batch_size=8)
    cancel = threading.Event()

    def cancel_after_first_epoch(update: ProgressUpdate) -> None:
        if update.phase == "training" and update.epoch >= 2:
            cancel.set()

    with pytest.raises(JobCancelled):
        run_job(spec, tmp_path, on_progress=cancel_after_first_epoch, cancel=cancel)
    interrupted = max(line["epoch"] for line in metric_lines(tmp_path) if line["kind"] == "epoch")
    assert interrupted < 8
    assert not (tmp_path / "weights.safetensors").exists()

    outputs = run_job(spec, tmp_path, resume=True)
    assert outputs.engine_note is not None and "resumed after epoch" in outputs.engine_note
    resumed_from = int(outputs.engine_note.rsplit(" ", 1)[-1])
    assert 1 <= resumed_from <= interrupted
    epochs = [line["epoch"] for line in metric_lines(tmp_path) if line["kind"] == "epoch"]
    assert epochs == list(range(1, 9))
    steps = [line["step"] for line in metric_lines(tmp_path) if line["kind"] == "step"]
    assert steps == list(range(1, 8 * (TRAIN_EXAMPLES // 8) + 1))
    assert outputs.metrics["epochs_run"] == 8 and outputs.metrics["test_accuracy"] > 5 * CHANCE


@pytest.fixture
def pool() -> Iterator[StandbyRanks]:
    """The launcher's standby pool, kept for the test and let go after it."""
    standby.keep(2)
    try:
        yield standby
    finally:
        standby.close()
        standby.most = 0


def dead(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie its parent has not reaped yet, or gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def standby_pids(parent: int | None = None) -> list[int]:
    """The standby ranks that run (not zombies), started by `parent` (default: this process)."""
    parent = parent or os.getpid()
    return [
        p.pid
        for p in psutil.process_iter(["cmdline", "ppid", "status"])
        if (p.info["cmdline"] or [])[-2:] == ["gallery_trainer.rank", "--standby"]
        and p.info["ppid"] == parent
        and p.info["status"] != psutil.STATUS_ZOMBIE
    ]


def test_standby_ranks_run_jobs_and_the_pool_follows_the_job_size(tmp_path: Path, pool: StandbyRanks) -> None:
    wait_for("a standby rank", lambda: pool.ready == 1, timeout=120)
    outputs = run_job(digits_spec({"kind": "ddp", "ranks": 2}), tmp_path / "two")
    log = (tmp_path / "two" / "train.log").read_text()
    # rank 0 was the standby (its output follows into the job's log); rank 1 was started for the job
    assert re.search(r"\$ RANK=0 .* \(a standby rank, pid \d+\)", log)
    assert re.search(r"\$ RANK=1 \S+ -m gallery_trainer\.rank --workdir \S+\n", log)
    assert_trained(outputs, tmp_path / "two", epochs=2, steps_per_epoch=TRAIN_EXAMPLES // 64)
    # after a 2-rank job two are kept ready
    wait_for("two standby ranks", lambda: pool.ready == 2, timeout=120)
    first, second = sorted(standby_pids())
    os.kill(first, signal.SIGKILL)  # a standby that dies while it waits is passed over
    # dead, not dying: a process on its way out has lost its command line (so `standby_pids` no longer
    # lists it) before it is a zombie, and a pool that polled it then would still find it running; and
    # reaped through the pool's own handle, whose exit code `take` then reads (a dead standby was still
    # handed to the job in 2 of 5 fresh-clone runs with only the first wait)
    wait_for("the standby's death", lambda: dead(first), timeout=30)
    (killed,) = [process for process in pool._held if process.pid == first]
    wait_for("the pool's handle to see it", lambda: killed.poll() is not None, timeout=30)
    outputs = run_job(digits_spec({"kind": "ddp"}), tmp_path / "one")
    assert f"(a standby rank, pid {second})" in (tmp_path / "one" / "train.log").read_text()
    assert_trained(outputs, tmp_path / "one", epochs=2, steps_per_epoch=TRAIN_EXAMPLES // 32)
    wait_for("a standby rank after the 1-rank job", lambda: pool.ready == 1, timeout=120)
    pool.close()
    wait_for("the standbys let go to exit", lambda: standby_pids() == [], timeout=15)


KEEPER = """
import sys, time
from gallery_trainer.standby import standby
standby.keep(1)
while not standby.ready:
    time.sleep(0.05)
print(standby._held[0].pid, flush=True)
time.sleep(600)
"""


def test_standby_ranks_die_with_a_trainer_that_is_killed(tmp_path: Path) -> None:
    keeper = subprocess.Popen([sys.executable, "-c", KEEPER], stdout=subprocess.PIPE, text=True)
    try:
        assert keeper.stdout is not None
        waiting = int(keeper.stdout.readline())
        assert standby_pids(keeper.pid) == [waiting]
    finally:
        keeper.kill()
        keeper.wait()
    # orphaned, it would be re-parented and wait on its stdin forever
    wait_for("the standby to go with its trainer", lambda: not psutil.pid_exists(waiting), timeout=30)
