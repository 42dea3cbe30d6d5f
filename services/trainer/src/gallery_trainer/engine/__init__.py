"""Training engines: DeepSpeed (ZeRO, data and pipeline parallel) and plain PyTorch DDP, run by one
epoch loop on every rank (`train_rank`)."""

from gallery_trainer.engine.job import RankError, RankJob
from gallery_trainer.engine.loop import train_rank

__all__ = ["RankError", "RankJob", "train_rank"]
