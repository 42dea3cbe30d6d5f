"""The module of each service's FastAPI app factory (`create()`), for tests that build every service's app
without starting it: the lifecycle services, and the Gallery (the web UI) beside them."""

from __future__ import annotations

LIFECYCLE_APPS = (
    "gallery_registry.app",
    "gallery_trainer.app",
    "gallery_optimizer.app",
    "gallery_deployer.deployer.app",
    "gallery_deployer.gateway.app",
    "gallery_monitor.app",
)
GALLERY_APP = "gallery_web.app"
