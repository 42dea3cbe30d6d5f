"""The process every rank runs: `python -m gallery_trainer.rank --workdir DIR [--resume]`.

Launchers (the DeepSpeed launcher, `python -m torch.distributed.run`) start one per rank with RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set. A rank that fails writes
`error-rank<N>.json` with the reason, so the job can tell its owner why.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

import torch.distributed as dist

from gallery_trainer.engine import RankError, train_rank

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


if __name__ == "__main__":
    sys.exit(main())
