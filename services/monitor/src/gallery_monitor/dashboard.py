"""The monitor's web dashboard: `GET /` and `GET /static/<file>`, served from the package.

The page is plain HTML, CSS and JavaScript (no build step, nothing from a CDN); it reads the
monitor's own `/api/v1` and redraws every few seconds.

Both routes are marked `public`, so they answer without a token: a browser cannot send one with a
page load, and the page holds no data. Every API call the page makes still needs a reader token
when tokens are configured; the page asks for one.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import FileResponse

from gallery_common.auth import public
from gallery_common.errors import NotFound

STATIC_DIR = Path(__file__).with_name("static")
_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page draws everything from its own files and the monitor's API; nothing else may load.
_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# An upgraded monitor's page must replace the old one at once; the files are a few kilobytes.
_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


@cache
def static_files() -> dict[str, Path]:
    """The files the dashboard may serve, by name: only those shipped in `static/`, never a path below it."""
    return {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in _MEDIA_TYPES}


def _file_response(path: Path) -> FileResponse:
    headers = dict(_HEADERS)
    if path.suffix == ".html":
        headers["Content-Security-Policy"] = _PAGE_POLICY
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers=headers)


@public
def index(request: Request) -> FileResponse:
    """The dashboard page."""
    return _file_response(static_files()["index.html"])


@public
def static_file(request: Request) -> FileResponse:
    """One of the dashboard's own files (script, style sheet, icon)."""
    name = request.path_params["name"]
    path = static_files().get(name)
    if path is None:
        raise NotFound(f"the dashboard has no file {name!r}")
    return _file_response(path)


router = APIRouter()
router.add_route("/", index, methods=["GET", "HEAD"], include_in_schema=False)
router.add_route("/static/{name:path}", static_file, methods=["GET", "HEAD"], include_in_schema=False)
