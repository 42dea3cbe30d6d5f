"""The Gallery's pages and files: every page address answers the single-page app's `index.html` (the
Monitoring view has its own page), and `/static/<file>` serves only the files shipped in `static/`.

The page routes are marked `public`, so a deep link opens without a token: a browser cannot send
one with a page load, and the pages hold no data. Every call they make to `/api/...` needs a reader
token when tokens are configured; the pages ask for one and keep it in `sessionStorage`.
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
MONITORING_PAGE = "monitoring/index.html"
APP_PAGE = "index.html"

# the addresses people share: each answers the app's page, which draws the view from the address
APP_PAGES = (
    "/",
    "/models",
    "/models/{name}",
    "/models/{name}/versions/{version}",
    "/models/{name}/lineage",
    "/models/{name}/try",
    "/models/{name}/experiments/{experiment_id}",
    "/runs",
    "/runs/{run_id}",
    "/compare",
    "/usage",
    "/projects",
    "/dead-letters",
)
MONITORING_PAGES = ("/monitoring", "/monitoring/{model}")

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}
# The pages draw everything from their own files and the gallery's API; nothing else may load. Images
# may also be drawn from data: and blob: URLs (a held-out example or a drawing, made in the page).
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# An upgraded gallery's pages must replace the old ones at once; the files are small.
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


@cache
def static_files() -> dict[str, Path]:
    """The files the gallery may serve, by path below `static/` (`app.js`, `monitoring/app.js`): only
    regular files shipped there with a known type, never anything reached through a link or `..`."""
    root = STATIC_DIR.resolve()
    found: dict[str, Path] = {}
    for path in sorted(STATIC_DIR.rglob("*")):
        if path.is_symlink() or not path.is_file() or path.suffix not in MEDIA_TYPES:
            continue
        if root not in path.resolve().parents:
            continue
        found[path.relative_to(STATIC_DIR).as_posix()] = path
    return found


def _file_response(path: Path) -> FileResponse:
    headers = dict(HEADERS)
    if path.suffix == ".html":
        headers["Content-Security-Policy"] = PAGE_POLICY
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=headers)


def _page(name: str) -> FileResponse:
    path = static_files().get(name)
    if path is None:
        raise NotFound(f"the gallery's page {name!r} is not installed")
    return _file_response(path)


@public
def app_page(request: Request) -> FileResponse:
    """The single-page app: the catalogue, model pages, lineage, try it, experiments and compare."""
    return _page(APP_PAGE)


@public
def monitoring_page(request: Request) -> FileResponse:
    """The Monitoring view: figures, drift, alerts and the lifecycle timeline of each model."""
    return _page(MONITORING_PAGE)


@public
def static_file(request: Request) -> FileResponse:
    """One of the gallery's own files (script, style sheet, icon, licence)."""
    name = request.path_params["name"]
    path = static_files().get(name)
    if path is None:
        raise NotFound(f"the gallery has no file {name!r}")
    return _file_response(path)


router = APIRouter()
for _path in APP_PAGES:
    router.add_route(_path, app_page, methods=["GET", "HEAD"], include_in_schema=False)
for _path in MONITORING_PAGES:
    router.add_route(_path, monitoring_page, methods=["GET", "HEAD"], include_in_schema=False)
router.add_route("/static/{name:path}", static_file, methods=["GET", "HEAD"], include_in_schema=False)
