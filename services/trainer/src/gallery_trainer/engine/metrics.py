"""metrics.jsonl: one JSON object per line, written by rank 0 only and flushed line by line, so the
job's owner can follow it while the ranks run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any


class MetricsWriter:
    """Appends `step` and `epoch` lines; on a resumed run it first drops lines after the resumed epoch."""

    def __init__(self, path: Path, *, enabled: bool, keep_through_epoch: int = 0) -> None:
        self.file: IO[str] | None = None
        if not enabled:
            return
        kept = []
        if keep_through_epoch and path.exists():
            kept = [line for line in path.read_text().splitlines() if _epoch_of(line) <= keep_through_epoch]
        self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - stays open for the whole run
        for line in kept:
            self.file.write(line + "\n")
        self.file.flush()

    def step(self, step: int, epoch: int, **metrics: float) -> None:
        self._write({"kind": "step", "step": step, "epoch": epoch, "time": time.time(), **metrics})

    def epoch(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        self._write({"kind": "epoch", "step": step, "epoch": epoch, "time": time.time(), **metrics})

    def _write(self, line: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(line) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _epoch_of(line: str) -> int:
    try:
        return int(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError):
        return 1 << 30
