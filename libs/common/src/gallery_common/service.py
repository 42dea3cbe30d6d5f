"""How a service advertises itself so that `gallery up` can find and start it.

A service package declares an entry point in the `modelgallery.services` group whose value is a
`ServiceSpec`, for example in its pyproject.toml:

    [project.entry-points."modelgallery.services"]
    registry = "gallery_registry.service:SERVICE"

The module holding the spec is imported by the launcher, so it should import nothing heavy:
the app factory is named by string and only imported in the service's own process.
"""

from __future__ import annotations

import importlib
import itertools
import re
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

ENTRY_POINT_GROUP = "modelgallery.services"
_FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class ServiceSpecError(ValueError):
    """An installed service advertises itself wrongly; the message names the entry point."""


@dataclass(frozen=True)
class ServiceSpec:
    """A service as the launcher sees it: its name, default port and app factory."""

    name: str
    port: int
    app_factory: str  # "module:function", a no-arg function returning a FastAPI app

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", self.name):
            raise ServiceSpecError(f"service name {self.name!r} must be lowercase letters, digits, '-' or '_'")
        if not 1 <= self.port <= 65535:
            raise ServiceSpecError(f"service {self.name}: port {self.port} is not a TCP port")
        if not _FACTORY_PATTERN.match(self.app_factory):
            raise ServiceSpecError(f"service {self.name}: app_factory {self.app_factory!r} is not 'module:function'")

    def create_app(self) -> Any:
        """Import the factory and call it; returns the service's ASGI app."""
        module_name, _, attr = self.app_factory.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
        return factory()


def _load(entry_point: EntryPoint) -> ServiceSpec:
    where = f"entry point {entry_point.name!r} ({entry_point.value})"
    try:
        spec = entry_point.load()
    except Exception as exc:
        raise ServiceSpecError(f"{where} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    if not isinstance(spec, ServiceSpec):
        raise ServiceSpecError(f"{where} is a {type(spec).__name__}, not a ServiceSpec")
    # `serve NAME` looks services up by entry-point name, so the two must agree.
    if spec.name != entry_point.name:
        raise ServiceSpecError(f"{where} describes a service named {spec.name!r}; the names must match")
    return spec


def discover_services() -> list[ServiceSpec]:
    """Every installed service, sorted by port; raise ServiceSpecError on a broken or clashing one."""
    specs: dict[str, ServiceSpec] = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        # The same distribution can be visible twice (an editable install plus PYTHONPATH).
        if entry_point.name in specs:
            continue
        specs[entry_point.name] = _load(entry_point)
    ordered = sorted(specs.values(), key=lambda s: (s.port, s.name))
    for first, second in itertools.pairwise(ordered):
        if first.port == second.port:
            raise ServiceSpecError(f"services {first.name} and {second.name} both want port {first.port}")
    return ordered


def find_service(name: str) -> ServiceSpec | None:
    """The installed service called `name`, importing only its own spec module."""
    for entry_point in entry_points(group=ENTRY_POINT_GROUP, name=name):
        return _load(entry_point)
    return None


def service_names() -> list[str]:
    """Names of the installed services, without importing any of them."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
