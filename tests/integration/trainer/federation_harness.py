"""Site folders and site processes for the federated training tests: each site a process of its own."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from waiting import wait_for

from gallery_common.contracts import read_split, write_split
from gallery_trainer.federated.partition import write_site_folders
from gallery_trainer.pipeline import TrainingFailed, run_job
from gallery_trainer.spec import JobSpec, parse_spec

GALLERY = str(Path(sys.executable).with_name("gallery"))


def federated_spec(port: int, *, test_share: float = 0.15, **engine: Any) -> JobSpec:
    """The digits job the tests federate: a small MLP, rounds of two local epochs; `test_share` of the rows
    held out for the coordinator's test split."""
    return parse_spec(
        {
            "name": "digits-federated",
            "data": {"source": "builtin", "name": "digits"},
            "preparation": {"split": {"train": 0.85 - test_share, "validation": 0.15, "test": test_share}},
            "model": {"hidden": [64]},
            "training": {"batch_size": 32, "learning_rate": 0.01, "seed": 0},
            "engine": {
                "kind": "federated",
                "address": f"127.0.0.1:{port}",
                "local_epochs": 2,
                "round_timeout_s": 60,
                **engine,
            },
        }
    )


def site_folders(spec: JobSpec, root: Path, n_sites: int = 3) -> dict[str, Path]:
    """Non-IID (Dirichlet 0.5) folders of the spec's training rows, one per site."""
    return write_site_folders(spec, root, n_sites=n_sites, alpha=0.5, seed=0)


def start_site(
    port: int, name: str, folder: Path, logs: Path, *, through_cli: bool = False, extra: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """One site process (`gallery site run` with `through_cli`), its output appended to `logs/<name>.log`."""
    args = ["--federation", f"127.0.0.1:{port}", "--site", name, "--data", str(folder), "--max-wait", "30", *extra]
    if through_cli:
        command = [GALLERY, "site", "run", *args]
    else:
        command = [sys.executable, "-m", "gallery_trainer.federated.site", *args]
    with open(logs / f"{name}.log", "ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


@contextmanager
def sites_running(
    port: int,
    folders: dict[str, Path],
    logs: Path,
    *,
    through_cli: tuple[str, ...] = (),
    extra: dict[str, tuple[str, ...]] | None = None,
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Start one process per site (those named in `through_cli` by `gallery site run`, each with its `extra`
    arguments); kill them after, and any the test adds to the dict."""
    processes = {
        name: start_site(port, name, folder, logs, through_cli=name in through_cli, extra=(extra or {}).get(name, ()))
        for name, folder in folders.items()
    }
    try:
        yield processes
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait(10)


def relay_connected(site: subprocess.Popen[bytes], port: int) -> bool:
    """Whether the site's Flower relay (a child process) holds a connection to the coordinator at `port`."""
    try:
        relays = psutil.Process(site.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return False
    for relay in relays:
        try:
            connections = relay.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        if any(c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED for c in connections):
            return True
    return False


@contextmanager
def joined_first(sites: dict[str, subprocess.Popen[bytes]], first: str, port: int) -> Iterator[None]:
    """Hold the other sites (stopped) until `first` has connected to the coordinator at `port`, which the
    body starts: with fewer than all sites as `min_sites` the rounds would otherwise begin without a site
    that starts late on a loaded machine, and a short job could end before it ever joins."""
    others = [process for name, process in sites.items() if name != first]
    for process in others:
        process.send_signal(signal.SIGSTOP)
    try:
        yield
        wait_for(f"{first} to connect to the coordinator", lambda: relay_connected(sites[first], port), timeout=60)
    finally:
        for process in others:
            process.send_signal(signal.SIGCONT)


def round_records(workdir: Path) -> list[dict[str, Any]]:
    """The job's per-round records so far (metrics.jsonl)."""
    path = workdir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def job_in_thread(spec: JobSpec, workdir: Path) -> tuple[threading.Thread, dict[str, Any]]:
    """`run_job` in a thread; the dict gets `outputs`, or `failed` with the reason."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["outputs"] = run_job(spec, workdir)
        except TrainingFailed as exc:
            outcome["failed"] = str(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def job_with_site_in_a_round(
    spec: JobSpec, workdir: Path, sites: dict[str, subprocess.Popen[bytes]], port: int, site: str
) -> tuple[threading.Thread, dict[str, Any]]:
    """`job_in_thread` once `site` has connected (`joined_first`), back when `site` has trained in a round."""
    with joined_first(sites, site, port):
        thread, outcome = job_in_thread(spec, workdir)
    key = f"site.{site}.train_loss"

    def trained() -> bool:
        return any(key in record for record in round_records(workdir))

    wait_for(f"{site} to train in a round (or the job to end)", lambda: trained() or not thread.is_alive(), timeout=120)
    assert trained(), f"the job ended without {site} in a round: {outcome}"
    return thread, outcome


def make_heavy(folder: Path, repeat: int) -> None:
    """Hold the site's training rows `repeat` times over, so that its training fills most of each round
    (a site killed while rounds run back to back is then killed mid-round)."""
    rows = read_split(folder / "train.npz")
    write_split(folder / "train.npz", np.tile(rows.x, (repeat, 1)), np.tile(rows.y, repeat))
