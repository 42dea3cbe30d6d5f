"""Real servers for the tests, started on free loopback ports and stopped afterwards."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from leftovers import OWNER_FILE, RUN_TAG, tag_this_run
from promtool_check import Promtool

from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port, wait_for_port

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

REPO = Path(__file__).resolve().parents[1]

# The chaos suite kills servers for minutes on end: only `make chaos` (GALLERY_CHAOS=1) collects it.
collect_ignore = [] if os.environ.get("GALLERY_CHAOS") == "1" else ["chaos"]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A fresh nats-server with JetStream (sync_interval: always) in a temp store dir."""
    server = EmbeddedNats(tmp_path / "nats", log_file=tmp_path / "nats.log").start()
    yield server
    server.stop()


def _moto_server_binary() -> Path:
    configured = os.environ.get("GALLERY_TEST_MOTO_SERVER")
    path = Path(configured) if configured else REPO / ".venv-moto" / "bin" / "moto_server"
    if not path.exists():
        pytest.fail(f"moto_server not found at {path}: run `make test`, which installs it")
    return path


class S3Server:
    """moto's S3 API server: the MinIO SDK talks to it as to MinIO."""

    access_key = "gallery-test"
    secret_key = "gallery-test-secret"

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def new_bucket_uri(self, prefix: str = "") -> str:
        """An s3:// root in a bucket name no other test uses (the store creates the bucket)."""
        bucket = f"t-{uuid.uuid4().hex[:12]}"
        return f"s3://{bucket}/{prefix}".rstrip("/")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(_moto_server_binary()), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        if not wait_for_port("127.0.0.1", port, timeout=30):
            pytest.fail(f"moto_server did not start; see {log}")
        yield S3Server(f"127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(10)


def _postgres_bin() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    if not candidates:
        pytest.fail("PostgreSQL is not installed: run `make test`, which installs it")
    return candidates[0].parent


class PostgresServer:
    """A throwaway PostgreSQL cluster; `new_database()` gives each test its own database."""

    def __init__(self, port: int, bindir: Path, run_as: list[str], data: Path) -> None:
        self.port = port
        self.bindir = bindir
        self.run_as = run_as
        self.data = data

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        subprocess.run(
            [
                *self.run_as,
                str(self.bindir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                name,
            ],
            check=True,
            capture_output=True,
        )
        return self.url(name)

    def start(self) -> None:
        """Start the cluster and wait until it accepts connections."""
        self._pg_ctl(
            "-l",
            str(self.data.parent / "postgres.log"),
            "-w",
            "-t",
            "60",
            "start",
            "-o",
            f"-h 127.0.0.1 -p {self.port} -k {self.data} -c fsync=off",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster; `fast` disconnects clients and rolls back their transactions, `immediate` crashes."""
        self._pg_ctl("-m", mode, "-w", "stop")

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args], check=True, capture_output=True
        )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _postgres_bin()
    # PostgreSQL refuses to run as root; as root we run it as the `postgres` system user, in a
    # folder of its own (pytest's temp folders are private to root)
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    top = Path(tempfile.mkdtemp(prefix="gallery-pg-"))
    (top / OWNER_FILE).write_text(os.environ[RUN_TAG])  # so a next run can clean up after a killed one
    data = top / "data"
    data.mkdir()
    if run_as:
        shutil.chown(top, "postgres")
        shutil.chown(data, "postgres")
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    server = PostgresServer(free_port(), bindir, run_as, data)
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database, once on SQLite and once on PostgreSQL (a new database on the session's server):
    for store and migration code that must work on both."""
    from gallery_common.db import make_engine

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'service.db'}"
    else:
        url = request.getfixturevalue("postgres_server").new_database()
    engine = make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server on a free loopback port, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run `make test`, which installs it")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if not wait_for_port("127.0.0.1", port, timeout=15):
            pytest.fail("redis-server did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C reaches the processes the tests start: a shell without job control starts a background
    `make test` with SIGINT ignored, every child would inherit that, and the tests that press Ctrl-C
    (`gallery up`, `gallery monitor`) would wait for an exit that never comes.

    A pytest-xdist worker (`make test` runs the files on several) starts with COLUMNS=80 and LINES=24 in its
    environment, which no terminal set; the CLI's rich console would take that width when imported and keep
    it, and wrap the tables the tests read at 80 columns whatever width a test asks for."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    tag_this_run()  # see leftovers.py
    if "PYTEST_XDIST_WORKER" in os.environ:
        for name in ("COLUMNS", "LINES"):
            os.environ.pop(name, None)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> Iterator[None]:
    """A module marked `story` is one scenario told in steps that share a stack (v1 in production before
    v2's canary): its tests run in the order written, wherever a plugin that shuffles (pytest-randomly,
    `-p randomly`) puts them. Every other test may run in any order."""
    outcome = yield
    slots: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        if item.get_closest_marker("story") is not None:
            slots.setdefault(item.nodeid.split("::", 1)[0], []).append(index)
    for indexes in slots.values():
        steps = sorted((items[i] for i in indexes), key=lambda item: item.reportinfo()[1] or 0)
        for index, step in zip(indexes, steps, strict=True):
            items[index] = step
    return outcome


@pytest.fixture(scope="session")
def promtool() -> Promtool:
    binary = Path(sys.executable).parent / "promtool"
    if not binary.exists():
        pytest.fail(f"promtool not found at {binary}: run `make test`, which installs it")
    return Promtool(binary)
