"""What the epoch loop needs from an engine: one optimizer step, evaluation forwards, state and checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from gallery_trainer.engine.batches import MicroBatch


class TrainingBackend(Protocol):
    """One rank's view of a distributed model and its optimizer."""

    name: str
    dp_rank: int
    dp_size: int
    holds_outputs: bool
    """Whether forward passes on this rank return the network's outputs (the last pipeline stage)."""

    def train_step(self, micro_batches: list[MicroBatch]) -> float:
        """Forward and backward over the micro-batches, then one optimizer step; the mean loss."""
        ...

    def forward_eval(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """The FP32 outputs for `x` without gradients (None on ranks that do not hold outputs)."""
        ...

    def learning_rate(self) -> float: ...

    def local_state(self) -> dict[str, torch.Tensor]:
        """Full (gathered) copies of the tensors this rank's layers hold, keyed `network.<layer>.<name>`."""
        ...

    def save_checkpoint(self, directory: Path, tag: str) -> None:
        """Model, optimizer and schedule state under `directory/tag`; every rank calls it."""
        ...

    def load_checkpoint(self, directory: Path, tag: str) -> None: ...
