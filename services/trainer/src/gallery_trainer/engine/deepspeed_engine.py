"""The DeepSpeed engine: ZeRO stages 0-3, data parallel, and `PipelineModule` stages (alone or with data
parallel: ranks = dp x pp)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import deepspeed
import torch
from torch import nn

from gallery_trainer.engine.batches import MicroBatch
from gallery_trainer.engine.distributed import RankInfo
from gallery_trainer.engine.optim import LossFn, lr_factor, make_optimizer
from gallery_trainer.spec import JobSpec

# DeepSpeed prints a line every `steps_per_print` steps; the loop writes its own metrics instead
NEVER = 2**31 - 1


def deepspeed_config(spec: JobSpec, dp_size: int) -> dict[str, Any]:
    """The DeepSpeed config the spec means (batch sizes, ZeRO stage, clipping)."""
    training = spec.training
    return {
        "train_micro_batch_size_per_gpu": training.batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation,
        "train_batch_size": training.batch_size * training.gradient_accumulation * dp_size,
        "gradient_clipping": training.gradient_clipping or 0.0,
        "zero_optimization": {"stage": spec.engine.zero_stage},
        # SGD is not on ZeRO's list of tested optimizers; it partitions like the others
        "zero_allow_untested_optimizer": True,
        "steps_per_print": NEVER,
        "wall_clock_breakdown": False,
    }


class DeepSpeedBackend:
    """A model wrapped by `deepspeed.initialize`, as a `PipelineModule` when the spec asks for stages."""

    name = "deepspeed"

    def __init__(
        self,
        spec: JobSpec,
        network: nn.Sequential,
        loss_fn: LossFn,
        info: RankInfo,
        precision: AbstractContextManager[Any] | None,
        steps_per_epoch: int,
    ) -> None:
        self.spec = spec
        self.info = info
        self.loss_fn = loss_fn
        self.layers = list(network)
        self.network = network
        self.precision = precision or nullcontext()
        self.pipelined = spec.engine.pipeline_stages > 1
        dp_size = info.world_size // spec.engine.pipeline_stages
        model: nn.Module = network
        if self.pipelined:
            from deepspeed.pipe import PipelineModule

            model = PipelineModule(
                layers=self.layers,
                num_stages=spec.engine.pipeline_stages,
                loss_fn=loss_fn,
                partition_method="parameters",
            )
        optimizer = make_optimizer(model.parameters(), spec.training)
        factor = lr_factor(spec.training, steps_per_epoch)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor),
            config=deepspeed_config(spec, dp_size),
        )
        if self.pipelined:
            grid: Any = model._grid
            self.dp_rank, self.dp_size = grid.get_data_parallel_rank(), grid.get_data_parallel_world_size()
            self.holds_outputs = bool(self.engine.is_last_stage())
        else:
            self.dp_rank, self.dp_size = info.rank, info.world_size
            self.holds_outputs = True
            if self.dp_size == 1 and spec.engine.zero_stage == 0:
                # averaging gradients over one rank changes nothing but costs a collective per step
                self.engine.enable_backward_allreduce = False

    def train_step(self, micro_batches: list[MicroBatch]) -> float:
        device = self.info.device
        if self.pipelined:
            batches = iter([(x.to(device), y.to(device)) for x, y in micro_batches])
            with self.precision:
                return float(self.engine.train_batch(data_iter=batches))
        total = 0.0
        for x, y in micro_batches:
            with self.precision:
                loss = self.loss_fn(self.engine(x.to(device)), y.to(device))
            self.engine.backward(loss)
            # steps the optimizer only at the accumulation boundary
            self.engine.step()
            total += float(loss.detach())
        return total / len(micro_batches)

    def forward_eval(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        device = self.info.device
        if self.pipelined:
            with self.precision:
                # the loss it computes (padding rows included) is ignored; the caller scores the outputs
                _, outputs = self.engine.eval_batch(
                    iter([(x.to(device), y.to(device))]), return_logits=True, num_micro_batches=1
                )
            return outputs.float().cpu() if self.holds_outputs else None
        self.engine.eval()
        try:
            with torch.no_grad(), self.precision:
                return self.engine(x.to(device)).float().cpu()
        finally:
            self.engine.train()

    def learning_rate(self) -> float:
        return float(self.engine.get_lr()[0])

    def local_state(self) -> dict[str, torch.Tensor]:
        if self.pipelined:
            module = self.engine.module
            owned = range(module._local_start, module._local_stop)
        else:
            owned = range(len(self.layers))
        gather: AbstractContextManager[Any] = nullcontext()
        if self.spec.engine.zero_stage == 3:
            gather = deepspeed.zero.GatheredParameters(list(self.engine.module.parameters()), modifier_rank=None)
        with gather:
            return {
                f"network.{i}.{name}": tensor.detach().cpu().clone().contiguous()
                for i in owned
                for name, tensor in self.layers[i].state_dict().items()
            }

    def save_checkpoint(self, directory: Path, tag: str) -> None:
        self.engine.save_checkpoint(str(directory), tag=tag, save_latest=False)

    def load_checkpoint(self, directory: Path, tag: str) -> None:
        path, _ = self.engine.load_checkpoint(str(directory), tag=tag)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag} in {directory}")
