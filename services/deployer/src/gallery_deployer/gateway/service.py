"""How `gallery up` finds the gateway: imported by the launcher, so it imports nothing heavy."""

from __future__ import annotations

from gallery_common.service import ServiceSpec

SERVICE = ServiceSpec(name="gateway", port=8080, app_factory="gallery_deployer.gateway.app:create")
