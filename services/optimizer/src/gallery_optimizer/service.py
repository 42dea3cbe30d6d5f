"""How `gallery up` finds the optimizer: its name, default port and app factory (imports nothing heavy)."""

from gallery_common.service import ServiceSpec

SERVICE = ServiceSpec(name="optimizer", port=8003, app_factory="gallery_optimizer.app:create")
