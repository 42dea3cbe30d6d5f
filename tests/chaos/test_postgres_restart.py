"""PostgreSQL restarts under a registry taking version registrations: clear 503s with Retry-After while it
is down, then recovery; every version a client was told about is there, none registered twice."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from chaos_figures import Figures
from lifecycle_stack import LifecycleStack
from waiting import wait_for

from gallery_common.nats_server import EmbeddedNats

MODEL = "chaos-pg"
WRITERS = 2
DOWN_FOR = 3.0


@pytest.fixture
def registry(tmp_path: Path, postgres_server) -> Iterator[str]:  # type: ignore[no-untyped-def]
    with EmbeddedNats(tmp_path / "nats", log_file=tmp_path / "nats.log") as nats_server:
        stack = LifecycleStack(home=tmp_path / "home", nats_url=nats_server.url)
        try:
            service = stack.start("registry", GALLERY_DATABASE_URL=postgres_server.new_database())
            yield f"{service.url}/api/v1"
        finally:
            stack.stop()


@dataclass
class Writer:
    """Registers versions one after another; each registration is retried (same run id) until a 2xx."""

    api: str
    name: str
    registered: dict[str, int] = field(default_factory=dict)  # run id → version the client was given
    answered_at: list[float] = field(default_factory=list)
    unavailable: int = 0
    unreachable: int = 0
    other: list[str] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        with httpx.Client(timeout=10) as client:
            n = 0
            while not stop.is_set():
                n += 1
                self.register(client, f"{self.name}-{n}")

    def register(self, client: httpx.Client, run_id: str) -> None:
        while True:
            try:
                answer = client.post(f"{self.api}/models/{MODEL}/versions", json={"run_id": run_id})
            except httpx.TransportError:
                self.unreachable += 1
                time.sleep(0.2)
                continue
            if answer.is_success:
                self.registered[run_id] = answer.json()["version"]
                self.answered_at.append(time.monotonic())
                return
            if answer.status_code == 503 and "database is unavailable" in answer.json()["error"]:
                self.unavailable += 1
                time.sleep(float(answer.headers["Retry-After"]))
                continue
            self.other.append(f"{answer.status_code} {answer.text[:200]}")
            time.sleep(0.2)


def all_versions(api: str) -> list[dict[str, object]]:
    versions: list[dict[str, object]] = []
    token: str | None = None
    while True:
        params = {"limit": 1000, **({"page_token": token} if token else {})}
        page = httpx.get(f"{api}/models/{MODEL}/versions", params=params, timeout=30).json()
        versions += page["versions"]
        token = page["next_page_token"]
        if not token:
            return versions


def test_postgres_restarted_during_registry_writes(registry: str, postgres_server, figures: Figures) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL restarted during registry writes"""
    assert httpx.post(f"{registry}/models", json={"name": MODEL}, timeout=10).status_code == 201
    writers = [Writer(registry, f"writer{i}") for i in range(WRITERS)]
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop,)) for w in writers]
    for thread in threads:
        thread.start()
    try:
        wait_for("registrations before the restart", lambda: sum(len(w.registered) for w in writers) >= 20)
        stopped = time.monotonic()
        postgres_server.stop("fast")  # every connection is cut, open transactions roll back
        time.sleep(DOWN_FOR)
        postgres_server.start()
        back = time.monotonic()
        first = wait_for(
            "a registration after the restart",
            lambda: min((t for w in writers for t in w.answered_at if t > back), default=None),
            timeout=60,
        )
        time.sleep(2)  # keep writing a while after recovery
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)

    told = {run_id: version for w in writers for run_id, version in w.registered.items()}
    stored = all_versions(registry)
    by_run = Counter(str(v["run_id"]) for v in stored)
    stored_pairs = {(str(v["run_id"]), v["version"]) for v in stored}
    lost = [run_id for run_id, version in told.items() if (run_id, version) not in stored_pairs]
    duplicated = sorted(run_id for run_id, n in by_run.items() if n > 1)
    figures.update(
        registrations=len(told),
        database_down_s=round(back - stopped, 1),
        answered_503=sum(w.unavailable for w in writers),
        connection_errors=sum(w.unreachable for w in writers),
        other_errors=sum(len(w.other) for w in writers),
        recovery_s=round(first - back, 2),
        lost=len(lost),
        registered_twice=len(duplicated),
    )
    assert not [e for w in writers for e in w.other], [e for w in writers for e in w.other][:5]
    assert sum(w.unavailable for w in writers) >= 1, "no request met the outage"
    assert not lost, f"versions the client was given are missing: {lost[:10]}"
    assert not duplicated, f"retried registrations were stored twice: {duplicated[:10]}"
