"""How `gallery up` finds the monitor: its name, default port and app factory (imports nothing heavy)."""

from gallery_common.service import ServiceSpec

SERVICE = ServiceSpec(name="monitor", port=8005, app_factory="gallery_monitor.app:create")
