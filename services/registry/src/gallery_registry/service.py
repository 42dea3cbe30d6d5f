"""How `gallery up` finds the registry: imported by the launcher, so it imports nothing heavy."""

from __future__ import annotations

from gallery_common.service import ServiceSpec

SERVICE = ServiceSpec(name="registry", port=8001, app_factory="gallery_registry.app:create")
