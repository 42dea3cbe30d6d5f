"""`gallery monitor NAME` against a stand-in of the monitor's REST contract, and once against the real monitor."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from monitor_contract_standin import MODEL, MonitorScene, demo_scene, serve, standin_app
from monitor_real_stack import publish_canary, publish_first_deployment, real_monitor, send_traffic

from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port

GALLERY = Path(sys.executable).parent / "gallery"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def scene() -> MonitorScene:
    return demo_scene()


@pytest.fixture
def monitor(scene: MonitorScene, tmp_path: Path) -> Iterator[str]:
    with serve(standin_app(scene, tmp_path), free_port()) as url:
        yield url


def environment(monitor_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALLERY_")}
    env.update(GALLERY_MONITOR_URL=monitor_url, COLUMNS="160", LINES="60", TERM="xterm")
    return env


def gallery_monitor(monitor_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GALLERY), "monitor", *args],
        env=environment(monitor_url),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def cells(line: str) -> list[str]:
    """The cells of one table row, its box-drawing borders dropped."""
    return [c.strip() for c in re.split(r"[│┃]", line) if c.strip()]


def row(output: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is `first`."""
    for line in output.splitlines():
        if cells(line)[:1] == [first]:
            return cells(line)
    raise AssertionError(f"no row starting with {first!r} in:\n{output}")


def test_once_prints_figures_drift_and_alerts(monitor: str, scene: MonitorScene) -> None:
    shown = gallery_monitor(monitor, MODEL, "--once")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert out.splitlines()[0].startswith(f"{MODEL}  production v2  updated ")
    assert row(out, "v2") == [
        "v2",
        "int8-dynamic",
        "production",
        "100%",
        "41.5",
        "0.10%",
        "2.10",
        "4.80",
        "7.90",
        "3.2",
    ]
    assert "gateway cache hit rate 18.40%" in out
    assert "drift: no drift  version 2, 4,812 samples over the last 5 min, prediction PSI 0.012" in out
    assert "no open alerts" in out
    assert "online quality, answers of the last 60 min" in out
    quality = out[out.index("online quality") :]  # the second table with a v2 row
    assert row(quality, "v2") == ["v2", "1,240", "1,240", "96.20%", "96.90%", "-0.7"]
    # under it, which variant gave the answers, beside the optimizer's accuracy of that variant
    assert row(quality, "· int8-dynamic") == ["· int8-dynamic", "1,200", "1,200", "96.20%", "96.60%", "-0.4"]
    assert row(quality, "· fp32") == ["· fp32", "40", "40", "95.00%", "96.90%", "-1.9"]
    assert "test: the gate's for a version, the optimizer's for a variant" in quality

    scene.deploy_canary(3, "fp32", 10)
    scene.shift_inputs()
    out = gallery_monitor(monitor, MODEL, "--once").stdout
    assert row(out, "v3")[:4] == ["v3", "fp32", "canary", "10%"]
    assert row(out, "v2")[3] == "90%"
    assert "drift: DRIFTED" in out and "- 4 features over PSI 0.2: 20, 21, 22, 23" in out
    assert ["20", "0.410", "0.370", "2.0e-09"] in [line.split() for line in out.splitlines()], "largest PSI first"
    alert = cells(next(line for line in out.splitlines() if "input drift" in line))
    assert re.fullmatch(r"\d\d:\d\d:\d\d", alert[0])
    assert alert[1:] == ["drift", "v2", "input drift: 4 features over PSI 0.2"]


def test_a_model_without_traffic_says_so(monitor: str) -> None:
    shown = gallery_monitor(monitor, "iris-mlp", "--once")
    assert shown.returncode == 0, shown.stderr
    assert "no production version" in shown.stdout
    assert "no traffic in this window" in shown.stdout
    assert "drift: no samples yet  all versions, 0 samples" in shown.stdout
    assert "online quality: no feedback on answers of the last 60 min" in shown.stdout


def test_an_unknown_model_is_one_clear_line(monitor: str) -> None:
    shown = gallery_monitor(monitor, "nope", "--once")
    assert shown.returncode == 1
    assert shown.stderr.strip() == (
        "the monitor has seen no event about model 'nope' (models it knows: digits-mlp, iris-mlp)"
    )


def test_an_unreachable_monitor_is_one_clear_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    shown = gallery_monitor(url, MODEL, "--once")
    assert shown.returncode == 1
    lines = shown.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cannot reach the monitor at {url}")
    assert "GALLERY_MONITOR_URL" in lines[0]


def read_until(fd: int, seen: list[str], wanted: str, timeout: float = 15) -> str:
    """Read the terminal until `wanted` shows up in the text since the call; returns that text."""
    start = len(seen)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                seen.append(ANSI.sub("", os.read(fd, 65536).decode(errors="replace")))
            except OSError:  # the child closed the terminal
                break
        if wanted in "".join(seen[start:]):
            return "".join(seen[start:])
    raise AssertionError(f"the terminal never showed {wanted!r}; it showed:\n{''.join(seen[start:])[-3000:]}")


def test_watching_refreshes_in_place_until_ctrl_c(monitor: str, scene: MonitorScene) -> None:
    controller, terminal = pty.openpty()
    child = subprocess.Popen(
        [str(GALLERY), "monitor", MODEL, "--interval", "0.3"],
        env=environment(monitor),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        close_fds=True,
    )
    os.close(terminal)
    seen: list[str] = []
    try:
        read_until(controller, seen, "int8-dynamic")
        scene.deploy_canary(3, "fp32", 10)
        screen = read_until(controller, seen, "canary")
        assert "fp32" in screen and "10%" in screen
        child.send_signal(signal.SIGINT)
        assert child.wait(10) == 0
        assert "Traceback" not in "".join(seen)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(controller)


def test_watching_stops_with_one_line_when_the_monitor_goes_away(scene: MonitorScene, tmp_path: Path) -> None:
    port = free_port()
    with serve(standin_app(scene, tmp_path), port) as url:
        child = subprocess.Popen(
            [str(GALLERY), "monitor", MODEL, "--interval", "0.3"],
            env=environment(url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.5)
    try:
        _, err = child.communicate(timeout=15)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 1
    assert err.strip().splitlines()[-1].startswith(f"cannot reach the monitor at http://127.0.0.1:{port}")


def test_once_against_the_real_monitor(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    with real_monitor(tmp_path, nats_server.url) as (url, server_url):
        publish_first_deployment(nats_server.url)
        publish_canary(nats_server.url)
        send_traffic(server_url, 1.5)
        time.sleep(1.0)  # two more scrapes
        shown = gallery_monitor(url, MODEL, "--once")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0].startswith(f"{MODEL}  production v1  updated ")
    v1 = row(shown.stdout, "v1")
    assert v1[:4] == ["v1", "fp32", "production", "100%"] and float(v1[4]) > 0
    assert "drift: no samples yet" in shown.stdout and "no open alerts" in shown.stdout


def gallery_slo(monitor_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GALLERY), "slo", *args], env=environment(monitor_url), capture_output=True, text=True, timeout=30
    )


def test_slo_shows_and_changes_a_models_slos_on_the_real_monitor(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    with real_monitor(tmp_path, nats_server.url) as (url, _):
        shown = gallery_slo(url, MODEL)
        assert shown.returncode == 0, shown.stderr
        assert row(shown.stdout, "max_accuracy_drop")[:2] == ["max_accuracy_drop", "off"]
        assert row(shown.stdout, "p99_ms")[:2] == ["p99_ms", "100"]

        changed = gallery_slo(url, MODEL, "--max-accuracy-drop", "0.05", "--quality-min-rows", "20", "--p99-ms", "80")
        assert changed.returncode == 0, changed.stderr
        assert f"SLOs of {MODEL} (changed)" in changed.stdout
        assert row(changed.stdout, "max_accuracy_drop")[1] == "0.05"
        assert row(changed.stdout, "quality_min_rows")[1] == "20" and row(changed.stdout, "p99_ms")[1] == "80"
        again = httpx.get(f"{url}/api/v1/slos/{MODEL}", timeout=10).json()
        assert (again["max_accuracy_drop"], again["quality_min_rows"], again["error_rate"]) == (0.05, 20, 0.01)

        switched = gallery_slo(url, MODEL, "--off", "max-accuracy-drop")
        assert switched.returncode == 0 and row(switched.stdout, "max_accuracy_drop")[1] == "off"
        assert row(switched.stdout, "quality_min_rows")[1] == "20", "what was not named keeps its value"

        wrong = gallery_slo(url, MODEL, "--off", "p99-ms")
        assert wrong.returncode == 2 and "--off takes one of min-online-accuracy" in wrong.stderr
        refused = gallery_slo(url, MODEL, "--max-online-rmse", "0")
        assert refused.returncode == 1 and "max_online_rmse" in refused.stderr
