"""How fast the embedded stack heals: SIGKILL a service or nats-server of `gallery up` and time it back.

    .venv/bin/python bench/heal.py [--runs 5] [--service registry]

`gallery up --detach --only SERVICE` in a temporary GALLERY_HOME (nats-server on a free port; the
service on its own port, which must be free). Each run SIGKILLs the service, then nats-server, and
times each from the kill to the first 200 of the new process's health check (the service's `/readyz`,
which needs its NATS connection back; nats-server's JetStream health), polled every 5 ms. The split
shows where the time goes: until the supervisor noticed the exit (its record says `restarting`),
until it started the new process (a new pid), and until that process answered ready.

Each kill is the first exit within the supervisor's restart window (GALLERY_RESTART_WINDOW_S=3 and
kills at least 3 s apart), so each restart waits the first delay (0.5 s), as after a lone crash; in
a crash loop the delay doubles by design.

Target: back within 5 s (min / median / max over the runs).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gallery_cli.records import ProcessRecord, is_alive, is_healthy, read_stack, stack_path
from gallery_common.netutil import free_port

GALLERY = Path(sys.executable).parent / "gallery"
HEAL_TARGET_S = 5.0
POLL_S = 0.005
DEADLINE_S = 60.0
WINDOW_S = 3.0


@dataclass(frozen=True)
class Heal:
    noticed_s: float  # the supervisor recorded the exit
    started_s: float  # a new process runs
    ready_s: float  # the new process answered its health check


def record(home: Path, name: str) -> ProcessRecord:
    """The process `name` as stack.json has it now (the supervisor replaces the file atomically)."""
    stack = read_stack(stack_path(home))
    if stack is None:
        raise SystemExit(f"no stack recorded in {home}: did `gallery up` stop?")
    return next(p for p in stack.processes if p.name == name)


def kill_and_time(home: Path, name: str) -> Heal:
    old = record(home, name)
    killed = time.monotonic()
    os.kill(old.pid, signal.SIGKILL)
    noticed = started = None
    while time.monotonic() - killed < DEADLINE_S:
        now = record(home, name)
        if noticed is None and (now.state == "restarting" or now.pid != old.pid):
            noticed = time.monotonic() - killed
        if now.pid != old.pid and is_alive(now):
            started = started or time.monotonic() - killed
            if is_healthy(now, timeout=1.0):
                return Heal(noticed or started, started, time.monotonic() - killed)
        time.sleep(POLL_S)
    raise SystemExit(f"{name} was not back within {DEADLINE_S:g} s: see {home / 'logs'}")


def summary(values: list[float]) -> str:
    return f"{min(values):6.2f} {statistics.median(values):6.2f} {max(values):6.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--service", default="registry", help="the service to kill (one installed in this venv)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-heal-") as work:
        home = Path(work) / "home"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GALLERY_")}
        env.update(
            GALLERY_HOME=str(home),
            GALLERY_NATS_URL=f"nats://127.0.0.1:{free_port()}",
            GALLERY_RESTART_WINDOW_S=str(WINDOW_S),
        )

        def gallery(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([str(GALLERY), *argv], env=env, capture_output=True, text=True, check=False)

        up = gallery("up", "--detach", "--only", args.service)
        if up.returncode != 0:
            raise SystemExit(f"gallery up failed:\n{up.stdout}{up.stderr}")
        heals: dict[str, list[Heal]] = {args.service: [], "nats": []}
        try:
            for run in range(args.runs):
                for name in heals:
                    killed = time.monotonic()
                    heals[name].append(kill_and_time(home, name))
                    print(f"run {run + 1}: {name} back in {heals[name][-1].ready_s:.2f} s", flush=True)
                    time.sleep(max(0.0, killed + WINDOW_S + 0.5 - time.monotonic()))  # out of the restart window
            restarts = {name: record(home, name).restarts for name in heals}
        finally:
            gallery("down")

    print(f"\n{'killed':<10} {'noticed s':>20} {'new process s':>20} {'ready s (min med max)':>22} {'restarts':>9}")
    missed = False
    for name, rows in heals.items():
        ready = [h.ready_s for h in rows]
        print(
            f"{name:<10} {summary([h.noticed_s for h in rows]):>20} {summary([h.started_s for h in rows]):>20} "
            f"{summary(ready):>22} {restarts[name]:>9}"
        )
        missed |= statistics.median(ready) > HEAL_TARGET_S
    print(f"target: back within {HEAL_TARGET_S:g} s (median) -> {'missed' if missed else 'met'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
