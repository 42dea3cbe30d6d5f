"""REST adapter of the gate: re-validate a registered version on demand."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field

from gallery_common.auth import requires
from gallery_common.deps import get_resources
from gallery_common.events import NAME_PATTERN
from gallery_common.settings import Role

from ..deps import RegistryCore
from ..project_access import ProjectAccessDep
from ..schemas import VersionStatus
from .validator import ValidationGate

router = APIRouter(prefix="/api/v1", tags=["validation gate"])


class ValidationResult(BaseModel):
    """The gate's verdict on one version."""

    name: str
    version: int
    semver: str
    status: VersionStatus = Field(description="validated or rejected")
    passed: bool
    reasons: list[str] = Field(description="every failed criterion; empty when the version passed")
    report: dict[str, Any] = Field(description="the evaluation report: metrics, latency, champion comparison, policy")


async def get_gate(request: Request) -> ValidationGate:
    return get_resources(request).core_as(RegistryCore).gate


GateDep = Annotated[ValidationGate, Depends(get_gate)]


# Admin: a new verdict is published, and `model.validated` sends the version to a canary (a
# version rolled back as degraded included).
@router.post(
    "/models/{name}/versions/{version}/validate", response_model=ValidationResult, dependencies=[requires(Role.admin)]
)
async def validate_version(
    gate: GateDep,
    access: ProjectAccessDep,
    name: Annotated[str, Path(pattern=NAME_PATTERN)],
    version: Annotated[int, Path(ge=1)],
) -> ValidationResult:
    """Run the validation gate again on a registered version and return its verdict.

    The version's status, report and reasons follow the new verdict, which is also published as
    `model.validated` or `model.rejected`. 404 for an unknown version, 409 for an archived one,
    503 while the same version is being validated. Needs the admin role in the model's project.
    """
    await anyio.to_thread.run_sync(access.model, name, Role.admin)
    outcome = await gate.revalidate(name, version)
    return ValidationResult(
        name=outcome.version.name,
        version=outcome.version.version,
        semver=outcome.version.semver,
        status=outcome.version.status,
        passed=outcome.passed,
        reasons=outcome.reasons,
        report=outcome.report,
    )
