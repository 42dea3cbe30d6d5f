"""Defence in depth behind NATS permissions: before an event moves production, the deployer asks the
registry, the system of record, whether it tells the truth.

A `model.validated` deploys only a version the registry holds as `validated`, and only the ONNX file
the registry recorded for it (same URI, same sha256). A `model.optimized` swaps in only an artifact the
registry has attached to that validated version. A forged or stale event that fails the check is
dead-lettered with the reason; a registry that cannot be reached makes the event wait and retry.
"""

from __future__ import annotations

import anyio

from gallery_common.consumer import PermanentError, TransientError
from gallery_common.contracts.registry import RegistryReader, VersionPublic, VersionStatus
from gallery_common.errors import NotFound, Unavailable
from gallery_common.events import ArtifactRef
from gallery_common.telemetry import get_logger

log = get_logger(__name__)


class Refused(PermanentError):
    """The registry contradicts the event: nothing is deployed, rolled or swapped."""


class Provenance:
    """Checks events against the registry at `registry`."""

    def __init__(self, registry: RegistryReader | None) -> None:
        self.registry = registry

    async def _version(self, model: str, version: int) -> VersionPublic:
        registry = self.registry
        if registry is None:
            raise Refused(f"no registry to confirm {model}:{version} with; set GALLERY_REGISTRY_URL")
        try:
            found = await anyio.to_thread.run_sync(registry.get_version, model, version)
        except NotFound:
            raise self._refuse(f"the registry has no version {model}:{version}") from None
        except Unavailable as exc:
            raise TransientError(f"cannot confirm {model}:{version} with the registry: {exc.message}") from exc
        if found.status != VersionStatus.validated:
            raise self._refuse(f"the registry holds {model}:{version} as {found.status.value!r}, not validated")
        return found

    def _refuse(self, reason: str) -> Refused:
        log.warning("event_refused_by_registry_check", reason=reason)
        return Refused(f"refused: {reason}")

    async def confirm_validated(self, model: str, version: int, onnx: ArtifactRef) -> None:
        """The version is validated and `onnx` is the ONNX file the registry recorded for it."""
        found = await self._version(model, version)
        recorded = found.artifact("onnx")
        if recorded is None or (recorded.uri, recorded.sha256) != (onnx.uri, onnx.sha256):
            raise self._refuse(
                f"the event's onnx artifact ({onnx.uri}, sha256 {onnx.sha256[:12]}...) is not the one the registry "
                f"recorded for {model}:{version}"
            )

    async def confirm_variant(self, model: str, version: int, artifact: ArtifactRef) -> None:
        """The version is validated and `artifact` is one of the files the registry holds for it."""
        found = await self._version(model, version)
        if not found.holds(artifact):
            raise self._refuse(
                f"{artifact.uri} (sha256 {artifact.sha256[:12]}...) is not an artifact the registry holds for "
                f"{model}:{version}"
            )
