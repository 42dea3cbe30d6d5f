"""How `gallery up` finds the trainer: its name, default port and app factory (imports nothing heavy)."""

from gallery_common.service import ServiceSpec

SERVICE = ServiceSpec(name="trainer", port=8002, app_factory="gallery_trainer.app:create")
