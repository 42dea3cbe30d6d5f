"""The plain PyTorch engine: DistributedDataParallel over the process group, gradient accumulation with
`no_sync`. The fallback when DeepSpeed is unavailable or `engine.kind: ddp` asks for it."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gallery_trainer.engine.batches import MicroBatch
from gallery_trainer.engine.distributed import RankInfo
from gallery_trainer.engine.optim import LossFn, make_optimizer, make_scheduler
from gallery_trainer.spec import JobSpec

STATE_FILE = "ddp-state.pt"


class DDPBackend:
    """A model wrapped in DistributedDataParallel, with its own optimizer and schedule."""

    name = "ddp"

    def __init__(
        self,
        spec: JobSpec,
        network: nn.Sequential,
        loss_fn: LossFn,
        info: RankInfo,
        precision: AbstractContextManager[Any] | None,
        steps_per_epoch: int,
    ) -> None:
        self.info = info
        self.loss_fn = loss_fn
        self.clip = spec.training.gradient_clipping
        self.precision = precision or nullcontext()
        self.model = network.to(info.device)
        device_ids = [info.local_rank] if info.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)
        self.optimizer = make_optimizer(self.model.parameters(), spec.training)
        self.scheduler = make_scheduler(self.optimizer, spec.training, steps_per_epoch)
        self.dp_rank, self.dp_size = info.rank, info.world_size
        self.holds_outputs = True

    def train_step(self, micro_batches: list[MicroBatch]) -> float:
        device = self.info.device
        total = 0.0
        for i, (x, y) in enumerate(micro_batches):
            # gradients are averaged across ranks once, on the last micro-batch
            sync = nullcontext() if i == len(micro_batches) - 1 else self.ddp.no_sync()
            with sync:
                with self.precision:
                    loss = self.loss_fn(self.ddp(x.to(device)), y.to(device))
                (loss / len(micro_batches)).backward()
            total += float(loss.detach())
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total / len(micro_batches)

    def forward_eval(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        self.model.eval()
        try:
            with torch.no_grad(), self.precision:
                return self.model(x.to(self.info.device)).float().cpu()
        finally:
            self.model.train()

    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def local_state(self) -> dict[str, torch.Tensor]:
        return {f"network.{k}": v.detach().cpu().clone().contiguous() for k, v in self.model.state_dict().items()}

    def save_checkpoint(self, directory: Path, tag: str) -> None:
        if self.info.rank == 0:
            target = directory / tag
            target.mkdir(parents=True, exist_ok=True)
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
            }
            torch.save(state, target / STATE_FILE)
        dist.barrier()

    def load_checkpoint(self, directory: Path, tag: str) -> None:
        # weights_only: the file holds tensors and plain containers, and nothing else is accepted
        state = torch.load(directory / tag / STATE_FILE, map_location=self.info.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
