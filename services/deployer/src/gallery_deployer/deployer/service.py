"""How `gallery up` finds the deployer: imported by the launcher, so it imports nothing heavy."""

from __future__ import annotations

from gallery_common.service import ServiceSpec

SERVICE = ServiceSpec(name="deployer", port=8004, app_factory="gallery_deployer.deployer.app:create")
