"""What a serving process imports before it answers (issue 20): each module left out is time off its cold start.

Each check imports what the process imports before its port opens, in a fresh interpreter, and names
the heavy packages that must not be among them. Timing is bench/cold_start.py's job.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

# the explain and training stacks, and rich (structlog's console renderer, which JSON logs never use)
NEVER_AT_START = ("shap", "lime", "sklearn", "torch", "deepspeed", "pandas", "scipy", "rich")

CASES = {
    # the model server's start path up to uvicorn.run; it never traces, reads file:// artifacts and
    # loads its NATS side in the background once it serves
    "model server": (
        "import gallery_deployer.modelserver.__main__, gallery_deployer.modelserver.app,"
        " gallery_deployer.modelserver.model, uvicorn",
        (
            *NEVER_AT_START,
            "opentelemetry.sdk",
            "sqlalchemy",
            "alembic",
            "minio",
            "nats",
            "aiohttp",
            "gallery_common.events",
            "fastapi",  # a Starlette app: FastAPI was a sixth of its cold start
            "gallery_common.oidc",
        ),
    ),
    # the gateway keeps no database and no artifacts; tracing's SDK loads in its lifespan
    "gateway": (
        "import gallery_deployer.gateway.app, uvicorn",
        (*NEVER_AT_START, "opentelemetry.sdk", "sqlalchemy", "sqlmodel", "minio", "onnxruntime", "onnx"),
    ),
    # every service reads its settings first; without an issuer, the OIDC client is not loaded
    "settings": (
        "from gallery_common.settings import GallerySettings, load_settings; load_settings(GallerySettings)",
        ("gallery_common.oidc", "jwt", "httpx", "cryptography"),
    ),
    # the registry checks its schema with one query when it is at head; Alembic loads only to migrate
    "registry": (
        "import gallery_registry.app, uvicorn",
        (*NEVER_AT_START, "alembic", "minio", "onnxruntime", "onnx"),
    ),
}


def imported(statement: str, modules: tuple[str, ...]) -> list[str]:
    """Those of `modules` that a fresh interpreter holds after running `statement`."""
    probe = f"import sys\n{statement}\nprint(' '.join(m for m in {modules!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


@pytest.mark.parametrize("process", CASES)
def test_a_serving_process_starts_without_what_it_does_not_serve_with(process: str) -> None:
    statement, forbidden = CASES[process]
    assert imported(statement, forbidden) == []


def test_the_probe_sees_an_import() -> None:
    # the check above must be able to fail: a module the statement imports is reported
    assert imported("import sqlalchemy", ("sqlalchemy", "minio")) == ["sqlalchemy"]
