"""The trainer's settings: the common `GALLERY_*` ones plus where jobs run and how many at once."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from gallery_common.settings import GallerySettings


class TrainerSettings(GallerySettings):
    """Settings of the trainer service, read from `GALLERY_*` variables."""

    service_name: str = "trainer"
    port: int = Field(default=8002, ge=1, le=65535)
    max_concurrent_jobs: int = Field(default=1, ge=1, le=64, description="Training jobs run at once.")
    jobs_dir: Path | None = Field(default=None, description="Job work folders; default $GALLERY_HOME/trainer/jobs")
    progress_interval: float = Field(
        default=1.0, ge=0.0, description="Seconds between progress writes to the database (throttle)."
    )

    @property
    def resolved_jobs_dir(self) -> Path:
        return (self.jobs_dir or self.home / "trainer" / "jobs").resolve()
