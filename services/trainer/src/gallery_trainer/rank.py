"""The process every rank runs: `python -m gallery_trainer.rank --workdir DIR [--resume]`.

Launchers (the DeepSpeed launcher, `python -m torch.distributed.run`) start one per rank with RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set. A rank that fails writes
`error-rank<N>.json` with the reason, so the job can tell its owner why.

`python -m gallery_trainer.rank --standby` is a rank started before its job: it imports what training
needs (torch, DeepSpeed: most of a rank's start), then waits for one job on stdin — a JSON line with the
rank's arguments, environment, folder and log file (`StandbyAssignment`) — and runs it as a rank started
with them would. The trainer keeps one or two of these ready (`gallery_trainer.standby.StandbyRanks`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from gallery_trainer.engine import RankError, train_rank
from gallery_trainer.standby import LOADED_LINE, StandbyAssignment

ERROR_FILE_PATTERN = "error-rank{rank}.json"


def report_error(workdir: Path, rank: int, message: str, *, user_error: bool) -> None:
    """Record why this rank stopped, for the job's owner."""
    doc = {"rank": rank, "message": message, "user_error": user_error}
    (workdir / ERROR_FILE_PATTERN.format(rank=rank)).write_text(json.dumps(doc))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gallery_trainer.rank", description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True, help="the prepared job folder")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    # the DeepSpeed launcher passes --local_rank; the rank is also in the environment
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    # DeepSpeed's autotuner imports MLflow whenever it is installed (a dev environment has its client):
    # seconds of every rank's start for a module a rank never uses; None makes that import fail fast
    sys.modules.setdefault("mlflow", None)  # type: ignore[arg-type]
    try:
        train_rank(args.workdir, resume=args.resume)
    except RankError as exc:
        print(f"rank {rank}: {exc}", file=sys.stderr, flush=True)
        report_error(args.workdir, rank, str(exc), user_error=True)
        return 2
    except Exception as exc:
        traceback.print_exc()
        report_error(args.workdir, rank, f"{type(exc).__name__}: {exc}", user_error=False)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _preload() -> None:
    """Import what any job's training imports, before a job is known."""
    sys.modules.setdefault("mlflow", None)  # type: ignore[arg-type]  # see main()
    import gallery_trainer.engine.ddp_engine

    try:
        import deepspeed.pipe  # noqa: F401

        import gallery_trainer.engine.deepspeed_engine  # noqa: F401
    except Exception:  # a broken DeepSpeed is met, and reported, by the job that needs it
        pass


def standby() -> int:
    """Preload, wait for a job on stdin, then run it (0 without running anything when stdin closes)."""
    _preload()
    os.write(1, LOADED_LINE)  # the pool counts it ready (stdout is the pool's pipe until the job's log)
    line = sys.stdin.buffer.readline()
    if not line.strip():
        return 0  # the trainer let this standby go
    job = StandbyAssignment.parse(line)
    os.environ.update(job.env)
    os.chdir(job.workdir)
    log = os.open(job.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    if threads := os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(threads))  # OpenMP read the variable when torch loaded, before the job
    return main(job.argv)


def _exit(code: int) -> None:
    """Exit without tearing the interpreter down: every file the job needs is written and closed by now,
    and unloading torch and DeepSpeed took a rank 0.5-1 s after its work was done."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(standby() if sys.argv[1:] == ["--standby"] else main())
