"""The gallery's pages and files: every address people share answers the page (never a 404), without a
token; `/static/...` serves only the files shipped in the package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gallery_fakes import READER, Scene, gallery_stack

from gallery_web.pages import STATIC_DIR, static_files

DEEP_LINKS = (
    "/",
    "/models",
    "/models/digits-mlp",
    "/models/digits-mlp/versions/3",
    "/models/digits-mlp/lineage",
    "/models/digits-mlp/try",
    "/runs",
    "/runs/0f3c9a8e2b",
    "/compare?runs=a1,b2",
    "/models?q=digits&task=classification&sort=metric&metric=accuracy",
    "/usage",
    "/projects",
    "/dead-letters",
)


@pytest.fixture
def http(tmp_path: Path) -> Iterator[httpx.Client]:
    with gallery_stack(Scene(), tmp_path) as stack, httpx.Client(base_url=stack.gallery, timeout=30) as client:
        yield client


def test_every_deep_link_answers_the_app_page_without_a_token(http: httpx.Client) -> None:
    page = (STATIC_DIR / "index.html").read_bytes()
    for link in DEEP_LINKS:
        answer = http.get(link)
        assert answer.status_code == 200, link
        assert answer.headers["content-type"] == "text/html; charset=utf-8", link
        assert answer.content == page, link
        policy = answer.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
        assert answer.headers["cache-control"] == "no-store"
    monitoring = (STATIC_DIR / "monitoring" / "index.html").read_bytes()
    for link in ("/monitoring", "/monitoring/digits-mlp"):
        answer = http.get(link)
        assert answer.status_code == 200 and answer.content == monitoring, link
    assert http.head("/models/digits-mlp").status_code == 200


def test_an_address_that_is_no_page_is_a_404(http: httpx.Client) -> None:
    assert http.get("/nope").status_code == 401, "an unknown address tells nothing without a token"
    for address in ("/nope", "/models/a/b/c/d", "/runs/a/b"):
        answer = http.get(address, headers={"Authorization": f"Bearer {READER}"})
        assert answer.status_code == 404, address


def test_only_shipped_files_are_served(http: httpx.Client) -> None:
    shipped = static_files()
    assert "index.html" in shipped and "monitoring/app.js" in shipped and "monitoring/index.html" in shipped
    for name in shipped:
        answer = http.get(f"/static/{name}")
        assert answer.status_code == 200, name
        assert answer.content == shipped[name].read_bytes(), name
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert http.get("/static/monitoring/render.js").headers["content-type"] == "text/javascript; charset=utf-8"
    for probe in (
        "/static/nope.js",
        "/static/../pages.py",
        "/static/..%2Fpages.py",
        "/static/%2e%2e/pages.py",
        "/static/monitoring/..%2F..%2Fapp.py",
        "/static/__init__.py",
        "/static/monitoring",
        "/static/",
    ):
        answer = http.get(probe, headers={"Authorization": f"Bearer {READER}"})
        assert answer.status_code == 404, probe
        assert answer.headers["content-type"] == "application/json", probe


def test_a_file_put_beside_the_static_files_is_not_served(tmp_path: Path) -> None:
    """Only regular files with a known type under static/: a link out of it, or a Python file, never."""
    assert all(not path.is_symlink() for path in static_files().values())
    assert all(path.suffix in {".html", ".js", ".css", ".svg", ".png", ".ico", ".json", ".txt"}
               for path in static_files().values())  # fmt: skip
    assert all(STATIC_DIR.resolve() in path.resolve().parents for path in static_files().values())
