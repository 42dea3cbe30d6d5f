"""Gradient accumulation is exact: batch 8 x 4 micro-batches trains the same weights as batch 32 x 1.

The rank loop runs in this process as a world of one rank (gloo), through the real engines.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from gallery_trainer.engine import train_rank
from gallery_trainer.engine.distributed import free_port
from gallery_trainer.engine.job import METRICS_FILE, WEIGHTS_FILE
from gallery_trainer.pipeline import prepare_job
from gallery_trainer.spec import parse_spec


@pytest.fixture(scope="module")
def one_rank_world() -> Iterator[None]:
    env = {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield
        if dist.is_initialized():
            dist.destroy_process_group()


def train(workdir: Path, kind: str, batch_size: int, accumulation: int) -> dict[str, torch.Tensor]:
    spec = parse_spec(
        {
            "name": "digits",
            "data": {"source": "builtin", "name": "digits"},
            "model": {"hidden": [32], "dropout": 0.0},
            "training": {
                "epochs": 2,
                "batch_size": batch_size,
                "gradient_accumulation": accumulation,
                "optimizer": "sgd",
                "learning_rate": 0.05,
                "momentum": 0.9,
                "seed": 3,
            },
            "engine": {"kind": kind, "checkpoint_epochs": 0},
        }
    )
    prepare_job(spec, workdir)
    train_rank(workdir)
    return load_file(str(workdir / WEIGHTS_FILE))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("kind", ["deepspeed", "ddp"])
def test_accumulated_micro_batches_equal_one_large_batch(kind: str, tmp_path: Path, one_rank_world: None) -> None:
    accumulated = train(tmp_path / "8x4", kind, 8, 4)
    large = train(tmp_path / "32x1", kind, 32, 1)
    small = train(tmp_path / "8x1", kind, 8, 1)
    assert max_difference(accumulated, large) < 1e-5
    # smaller steps without accumulation really are a different training run
    assert max_difference(small, large) > 1e-3
    # one optimizer step per 32 examples either way: 1257 training examples, 2 epochs
    steps = [line for line in (tmp_path / "8x4" / METRICS_FILE).read_text().splitlines() if '"kind": "step"' in line]
    assert len(steps) == 2 * (1257 // 32)
