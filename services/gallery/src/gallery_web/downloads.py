"""Downloads of a version's artifacts (ONNX, variants, the edge bundle, the model card, splits) for the
model page: the registry says which artifact a role is, the artifact store hands over its bytes, checked
against the sha256 the registry holds before the first byte leaves.

Blocking (artifact store): call from a worker thread.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from gallery_common.artifacts import ArtifactStore
from gallery_common.contracts import ArtifactRole, VersionPublic
from gallery_common.errors import NotFound

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Download:
    """A verified copy of an artifact on local disk, and the file name a browser should save it as."""

    path: Path
    filename: str
    media_type: str


def filename(version: VersionPublic, role: str, uri: str) -> str:
    """`<model>-v<version>-<role><suffix>`, the suffix taken from the stored object's name."""
    suffixes = "".join(PurePosixPath(uri.split("?", 1)[0]).suffixes[-2:])
    return _UNSAFE.sub("_", f"{version.name}-v{version.version}-{role}{suffixes}")


def media_type(name: str) -> str:
    if name.endswith(".md"):
        return "text/markdown; charset=utf-8"
    if name.endswith(".json"):
        return "application/json"
    return "application/octet-stream"


def fetch(store: ArtifactStore, version: VersionPublic, role: str, workdir: Path) -> Download:
    """The artifact attached to `version` as `role`, downloaded into `workdir` and verified."""
    try:
        found = version.artifacts.get(ArtifactRole(role))
    except ValueError:
        found = None
    if found is None:
        held = ", ".join(sorted(r.value for r in version.artifacts)) or "none"
        raise NotFound(f"{version.name}:{version.version} has no {role!r} artifact (it holds: {held})")
    name = filename(version, role, found.uri)
    folder = Path(tempfile.mkdtemp(prefix="download-", dir=workdir))
    try:
        path = store.download(found.uri, folder / name, found.sha256)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Download(path=path, filename=name, media_type=media_type(name))


def discard(download: Download) -> None:
    """Remove the local copy once it has been sent."""
    shutil.rmtree(download.path.parent, ignore_errors=True)
