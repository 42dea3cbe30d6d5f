"""How examples reach the ranks: a seeded shuffle per epoch, cut into optimizer steps and micro-batches.

Every data-parallel rank runs the same number of steps (a collective in a step would otherwise wait
forever), so the last partial global batch of an epoch is dropped; the reshuffle each epoch means
no example is left out for good. Evaluation pads each rank's last chunk instead and masks the padding.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

MicroBatch = tuple[torch.Tensor, torch.Tensor]


class ShardedBatches:
    """One data-parallel rank's micro-batches, grouped per optimizer step.

    A step covers `batch_size * accumulation * dp_size` consecutive examples of the epoch's permutation;
    this rank's micro-batch `m` is slice `m * dp_size + dp_rank` of it, so with one rank a step is the
    same examples whatever the split into micro-batches (what makes accumulation exact).
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        batch_size: int,
        accumulation: int,
        dp_rank: int,
        dp_size: int,
        seed: int,
    ) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.y = torch.from_numpy(np.ascontiguousarray(y))
        self.batch_size = batch_size
        self.accumulation = accumulation
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.seed = seed

    @property
    def step_examples(self) -> int:
        """Examples one optimizer step consumes over all data-parallel ranks."""
        return self.batch_size * self.accumulation * self.dp_size

    @property
    def steps_per_epoch(self) -> int:
        return len(self.x) // self.step_examples

    def epoch(self, epoch: int) -> Iterator[list[MicroBatch]]:
        """The micro-batches of each optimizer step of `epoch` for this rank."""
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        for step in range(self.steps_per_epoch):
            start = step * self.step_examples
            micro = []
            for m in range(self.accumulation):
                offset = start + (m * self.dp_size + self.dp_rank) * self.batch_size
                idx = order[offset : offset + self.batch_size]
                micro.append((self.x[idx], self.y[idx]))
            yield micro


@dataclass
class EvalChunk:
    """A fixed-size chunk of evaluation examples; only the first `real` rows count."""

    x: torch.Tensor
    y: torch.Tensor
    real: int


def eval_chunks(x: np.ndarray, y: np.ndarray, *, chunk_size: int, dp_rank: int, dp_size: int) -> list[EvalChunk]:
    """This rank's share of the evaluation examples in chunks of exactly `chunk_size` rows, the same
    number of chunks on every rank (padding with zero rows), because engines that run collectives
    in the forward pass (ZeRO-3, pipelines) need every rank to take part in every chunk."""
    rows = np.arange(dp_rank, len(x), dp_size)
    per_rank = -(-len(x) // dp_size)
    n_chunks = max(1, -(-per_rank // chunk_size))
    chunks = []
    for c in range(n_chunks):
        idx = rows[c * chunk_size : (c + 1) * chunk_size]
        cx = np.zeros((chunk_size, x.shape[1]), dtype=np.float32)
        cy = np.zeros((chunk_size, *y.shape[1:]), dtype=y.dtype)
        cx[: len(idx)], cy[: len(idx)] = x[idx], y[idx]
        chunks.append(EvalChunk(torch.from_numpy(cx), torch.from_numpy(cy), len(idx)))
    return chunks
