"""The trainer's settings: the common `GALLERY_*` ones plus where jobs run and how many at once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from gallery_common.settings import JobWorkerSettings
from gallery_trainer.admission import (
    CEILING_BATCH_SIZE,
    CEILING_LAYER_WIDTH,
    CEILING_RANKS,
    CEILING_SEARCH_BUDGET,
    CEILING_SPEC_BYTES,
    DEFAULT_BATCH_SIZE,
    DEFAULT_LAYER_WIDTH,
    DEFAULT_LOCAL_RANKS,
    DEFAULT_NODE_HOSTS,
    DEFAULT_RANKS,
    DEFAULT_SEARCH_BUDGET,
    DEFAULT_SPEC_BYTES,
    SpecPolicy,
    parse_name_list,
    parse_path_list,
)


class TrainerSettings(JobWorkerSettings):
    """Settings of the trainer service, read from `GALLERY_*` variables."""

    service_name: str = "trainer"
    port: int = Field(default=8002, ge=1, le=65535)
    max_concurrent_jobs: int = Field(default=1, ge=1, le=64, description="Training jobs run at once.")
    standby_ranks: int = Field(
        default=2,
        ge=0,
        le=16,
        description="Most rank processes kept started ahead of their job, torch and DeepSpeed imported "
        "(about 250 MB each; as many as the last job's local ranks, at least one; 0: none)",
    )
    jobs_dir: Path | None = Field(default=None, description="Job work folders; default $GALLERY_HOME/trainer/jobs")
    progress_interval: float = Field(
        default=1.0, ge=0.0, description="Seconds between progress writes to the database (throttle)."
    )
    data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders a job's data.path (and an absolute engine.hostfile) may lie in, separated by ':' or "
        "','; default $GALLERY_HOME/data",
    )
    node_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_NODE_HOSTS),
        description="Host names (shell patterns such as gpu-*) that engine.nodes may name, comma separated",
    )
    max_spec_bytes: int = Field(default=DEFAULT_SPEC_BYTES, ge=1024, le=CEILING_SPEC_BYTES)
    max_import_bytes: int = Field(
        default=512 * 1024**2,
        ge=1,
        description="the whole form of POST /api/v1/imports (the ONNX file and its splits), in place of "
        "GALLERY_MAX_BODY_BYTES; the import holds it in memory while it adapts and checks the model",
    )
    max_layer_width: int = Field(
        default=DEFAULT_LAYER_WIDTH, ge=1, le=CEILING_LAYER_WIDTH, description="Units of a hidden layer, channels"
    )
    max_batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1, le=CEILING_BATCH_SIZE)
    max_ranks: int = Field(default=DEFAULT_RANKS, ge=1, le=CEILING_RANKS, description="Ranks of a job, all machines")
    max_local_ranks: int = Field(
        default=DEFAULT_LOCAL_RANKS, ge=1, le=CEILING_RANKS, description="Ranks of a job on the trainer's machine"
    )
    max_search_budget: int = Field(default=DEFAULT_SEARCH_BUDGET, ge=1, le=CEILING_SEARCH_BUDGET)

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        return parse_path_list(value)

    @field_validator("node_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        return parse_name_list(value)

    @property
    def resolved_jobs_dir(self) -> Path:
        return (self.jobs_dir or self.home / "trainer" / "jobs").resolve()

    @property
    def resolved_data_roots(self) -> tuple[Path, ...]:
        """The data roots as absolute paths with their symlinks resolved."""
        return tuple(root.resolve() for root in (self.data_roots or [self.home / "data"]))

    def spec_policy(self) -> SpecPolicy:
        """What this trainer admits: its data roots, node hosts and size limits."""
        return SpecPolicy(
            data_roots=self.resolved_data_roots,
            node_hosts=tuple(self.node_hosts),
            max_spec_bytes=self.max_spec_bytes,
            max_layer_width=self.max_layer_width,
            max_batch_size=self.max_batch_size,
            max_ranks=self.max_ranks,
            max_local_ranks=self.max_local_ranks,
            max_search_budget=self.max_search_budget,
        )
