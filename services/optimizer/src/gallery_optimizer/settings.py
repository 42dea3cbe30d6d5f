"""The optimizer's settings: the common `GALLERY_*` ones plus the registry it reports to and its work folder."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from gallery_common.settings import JobWorkerSettings


class OptimizerSettings(JobWorkerSettings):
    """Settings of the optimizer service, read from `GALLERY_*` variables."""

    service_name: str = "optimizer"
    port: int = Field(default=8003, ge=1, le=65535)
    registry_url: str = Field(default="http://127.0.0.1:8001", description="The registry's REST API.")
    registry_token: SecretStr | None = Field(default=None, description="Bearer token for the registry (writer).")
    registry_timeout: float = Field(default=30.0, gt=0, description="Seconds per registry request.")
    work_dir: Path | None = Field(default=None, description="Job work folders; default $GALLERY_HOME/optimizer")
    progress_interval: float = Field(
        default=0.5, ge=0.0, description="Seconds between progress writes to the database (throttle)."
    )
    keep_workdirs: bool = Field(default=False, description="Keep a finished job's work folder (for debugging).")

    @field_validator("registry_url")
    @classmethod
    def _check_registry_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) URL: {value!r}")
        return value.rstrip("/")

    @property
    def resolved_work_dir(self) -> Path:
        return (self.work_dir or self.home / "optimizer").resolve()
