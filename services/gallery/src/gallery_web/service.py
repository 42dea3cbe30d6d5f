"""How `gallery up` finds the Gallery's web app: its name, default port and app factory (imports nothing heavy)."""

from gallery_common.service import ServiceSpec

SERVICE = ServiceSpec(name="gallery", port=8000, app_factory="gallery_web.app:create")
