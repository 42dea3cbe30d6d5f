"""Process-group set-up shared by the engines: gloo on the CPU, NCCL on GPUs, chosen automatically."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from gallery_common.netutil import free_port


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device


def choose_backend(requested: str = "auto") -> str:
    """`nccl` when CUDA is available (or asked for), else `gloo`."""
    if requested != "auto":
        return requested
    return "nccl" if torch.cuda.is_available() else "gloo"


def ensure_rank_environment() -> None:
    """Outside a launcher, describe a world of one rank so the env:// rendezvous works in-process."""
    if "RANK" in os.environ:
        return
    os.environ.update(
        {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    )


def init_process_group(requested_backend: str, *, use_deepspeed: bool) -> RankInfo:
    """Join (or reuse) the default process group and pick this rank's device."""
    ensure_rank_environment()
    backend = choose_backend(requested_backend)
    if use_deepspeed:
        import deepspeed

        from gallery_trainer.engine.build_ops import load_comm_op, needs_comm_op, without_comm_op

        device_type = "cuda" if backend == "nccl" else "cpu"
        if needs_comm_op(int(os.environ["WORLD_SIZE"]), device_type):
            load_comm_op()  # built under this installation's lock, so DeepSpeed finds it loaded
            joining: AbstractContextManager[Any] = nullcontext()
        else:
            joining = without_comm_op()
        with joining:
            # joins the group itself, or wraps the one this process already has
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    elif not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return RankInfo(dist.get_rank(), dist.get_world_size(), local_rank, backend, device)


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of `values` over every rank."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return [float(v) for v in tensor.cpu()]


def gather_to_first(obj: Any) -> list[Any] | None:
    """Every rank's `obj` on rank 0 (None elsewhere)."""
    received: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, received, dst=0)
    return received


def bf16_supported(device: torch.device) -> bool:
    """Whether autocast to bfloat16 runs on this device."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = torch.nn.functional.linear(torch.ones(2, 4), torch.ones(3, 4))
        return out.dtype == torch.bfloat16
    except RuntimeError:
        return False


def precision_context(precision: str, device: torch.device) -> AbstractContextManager[Any]:
    """The autocast context for `precision` (bf16) or a no-op (fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()
