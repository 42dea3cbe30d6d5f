"""Launch commands, following metrics.jsonl, the DDP fallback and the reasons a user reads on failure."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gallery_trainer import launcher
from gallery_trainer.launcher import MetricsTail, failure_reason, launch_command
from gallery_trainer.pipeline import TrainingFailed, choose_engine
from gallery_trainer.spec import parse_spec


def spec_with(engine: dict) -> object:
    return parse_spec({"name": "digits", "data": {"source": "builtin", "name": "digits"}, "engine": engine})


def test_a_hostfile_job_goes_through_the_deepspeed_launcher(tmp_path: Path) -> None:
    command = launch_command(spec_with({"ranks": 8, "hostfile": "/etc/gallery/hosts"}), tmp_path, 29600)
    assert Path(command[0]).name in ("deepspeed", Path(sys.executable).name)
    joined = " ".join(command)
    assert "--hostfile /etc/gallery/hosts" in joined and "--master_port 29600" in joined
    assert "--num_gpus" not in joined
    assert command[-4:] == ["--module", "gallery_trainer.rank", "--workdir", str(tmp_path)]


def test_ranks_on_this_machine_start_without_a_launcher(tmp_path: Path) -> None:
    for engine in ({"ranks": 1}, {"ranks": 2}, {"kind": "ddp", "ranks": 3}):
        assert launcher.runs_locally(spec_with(engine))
    assert not launcher.runs_locally(spec_with({"ranks": 2, "hostfile": "hosts"}))
    assert launcher.rank_command(tmp_path, resume=True) == [
        sys.executable,
        "-m",
        "gallery_trainer.rank",
        "--workdir",
        str(tmp_path),
        "--resume",
    ]
    with pytest.raises(TrainingFailed, match="needs no launcher"):
        launch_command(spec_with({"kind": "ddp", "ranks": 3}), tmp_path, 29700)


def test_each_rank_started_here_is_told_its_place_as_a_launcher_would(tmp_path: Path) -> None:
    spec = spec_with({"ranks": 2})
    env = launcher.rank_environment(spec, 29501, 1)
    told = {k: env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    assert told == {
        "RANK": "1",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29501",
    }
    assert "MASTER_PORT" not in launcher.rank_environment(spec, 29501)  # a launcher's own environment


def test_metrics_tail_returns_only_complete_new_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.read_new() == []
    with open(path, "w") as out:
        out.write(json.dumps({"kind": "step", "step": 1}) + "\n" + '{"kind": "st')
    assert tail.read_new() == [{"kind": "step", "step": 1}]
    with open(path, "a") as out:
        out.write('ep", "step": 2}\n')
    assert tail.read_new() == [{"kind": "step", "step": 2}]
    assert tail.read_new() == []


def test_failure_reason_prefers_the_users_mistake_then_the_first_crash(tmp_path: Path) -> None:
    (tmp_path / "error-rank1.json").write_text(
        json.dumps({"rank": 1, "message": "ValueError: boom", "user_error": False})
    )
    time.sleep(0.01)
    (tmp_path / "error-rank0.json").write_text(
        json.dumps({"rank": 0, "message": "RuntimeError: Connection closed by peer", "user_error": False})
    )
    assert failure_reason(tmp_path, 1) == "training failed on rank 1: ValueError: boom"
    (tmp_path / "error-rank2.json").write_text(
        json.dumps({"rank": 2, "message": "training.batch_size: too big", "user_error": True})
    )
    assert failure_reason(tmp_path, 2) == "training.batch_size: too big"


def test_failure_reason_without_reports_quotes_the_log(tmp_path: Path) -> None:
    (tmp_path / "train.log").write_text("starting\nImportError: no module named foo\n")
    reason = failure_reason(tmp_path, 1)
    assert reason.startswith("the training ranks exited with code 1") and "no module named foo" in reason


def test_ddp_is_the_fallback_when_deepspeed_cannot_be_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "deepspeed_import_error", lambda: "the deepspeed package is not installed")
    spec, note = choose_engine(spec_with({"ranks": 2, "zero_stage": 2}))
    assert spec.engine.kind == "ddp" and spec.engine.zero_stage == 0 and spec.engine.ranks == 2
    assert note is not None and "DeepSpeed is unavailable" in note and "ZeRO stage 2" in note
    with pytest.raises(TrainingFailed, match="pipeline stages need DeepSpeed"):
        choose_engine(spec_with({"ranks": 2, "pipeline_stages": 2}))


def test_deepspeed_is_kept_when_it_imports() -> None:
    spec = spec_with({"ranks": 2})
    assert choose_engine(spec) == (spec, None)


def test_the_shared_memory_deepspeed_leaves_for_a_job_is_removed(tmp_path: Path) -> None:
    for name in ("deepspeed_allreduce_buffer_0_127.0.0.1_29611_0", "deepspeed_allreduce_buffer_0_127.0.0.1_29611_1"):
        (tmp_path / name).write_bytes(b"\0" * 16)
    other_job = tmp_path / "deepspeed_allreduce_buffer_0_127.0.0.1_29612_0"
    other_job.write_bytes(b"\0")

    removed = launcher.remove_shared_buffers(29611, shm=tmp_path)

    assert len(removed) == 2
    assert [p.name for p in tmp_path.iterdir()] == [other_job.name]  # another running job keeps its buffer


PEER_WAITING_ON_A_FAILED_RANK = """
import os, sys, time
if os.environ["RANK"] == "1":
    print("rank 1 gives up", flush=True)
    sys.exit(3)
time.sleep(600)  # rank 0 blocked in a collective its failed peer never joins
"""


def test_a_failed_rank_stops_its_peers_and_the_job_fails_with_its_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "rank.py"
    script.write_text(PEER_WAITING_ON_A_FAILED_RANK)
    monkeypatch.setattr(launcher, "rank_command", lambda workdir, resume=False: [sys.executable, str(script)])
    workdir = tmp_path / "job"
    workdir.mkdir()
    with pytest.raises(TrainingFailed, match=r"exited with code 3.*rank 1 gives up"):
        launcher.run_ranks(spec_with({"kind": "ddp", "ranks": 2}), workdir, 29650)
    # the waiting peer was stopped and reaped, not left to sleep on
    left = [p.pid for p in launcher.psutil.process_iter(["cmdline"]) if str(script) in (p.info["cmdline"] or [])]
    assert left == []


def test_a_standby_rank_that_ended_before_its_job_is_replaced_by_a_rank_started_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the pool polled it running a moment ago; it has exited since (killed, say)
    ended = subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.PIPE)
    ended.wait()
    monkeypatch.setattr(launcher.standby, "take", lambda count: [ended])
    with (tmp_path / "train.log").open("wb") as log:
        ranks = launcher._start(spec_with({"ranks": 1}), tmp_path, 29555, False, log)
    try:
        assert len(ranks.processes) == 1 and ranks.processes[0].pid != ended.pid
    finally:
        ranks.stop()
    text = (tmp_path / "train.log").read_text()
    assert f"(the standby rank, pid {ended.pid}, ended before it took the job)" in text
    assert re.search(r"\$ RANK=0 \S+ -m gallery_trainer\.rank --workdir \S+\n", text), text
