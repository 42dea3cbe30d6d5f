"""System figures of a run: duration, peak memory of the training ranks, CPUs, library versions."""

from __future__ import annotations

import os
import platform
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import Any

import psutil


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


class PeakRssMonitor:
    """Samples resident memory while training runs, in a daemon thread.

    When training starts rank processes (DeepSpeed's launcher), the ranks are the leaves of this
    process's tree of descendants: `peak_ranks` is the peak of their summed RSS, `peak_tree` that of
    every descendant, launchers included. When training runs in this process, the figure is this
    process's own peak. With several jobs at once the descendants of all of them are counted, so
    the figures are then upper bounds.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.peak_ranks = 0
        self.peak_tree = 0
        self.peak_self = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trainer-rss", daemon=True)
        self._process = psutil.Process()
        # processes this one already had (a sidecar server, an earlier job) are not this run's
        self._earlier = {child.pid for child in self._process.children(recursive=True)}

    def __enter__(self) -> PeakRssMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        try:
            self.peak_self = max(self.peak_self, self._process.memory_info().rss)
            ranks = tree = 0
            for child in self._process.children(recursive=True):
                try:
                    if child.pid in self._earlier:
                        continue
                    rss = child.memory_info().rss
                    tree += rss
                    if not child.children():
                        ranks += rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.peak_ranks = max(self.peak_ranks, ranks)
            self.peak_tree = max(self.peak_tree, tree)
        except psutil.Error:
            return

    def figures(self) -> dict[str, Any]:
        if self.peak_ranks:
            return {
                "peak_rss_bytes": self.peak_ranks,
                "peak_rss_scope": "rank processes",
                "peak_rss_all_children_bytes": self.peak_tree,
            }
        return {"peak_rss_bytes": self.peak_self, "peak_rss_scope": "trainer process"}


class RunClock:
    """Wall time of a run, from construction to `seconds`."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    @property
    def seconds(self) -> float:
        return round(time.monotonic() - self._start, 3)


def host_figures() -> dict[str, Any]:
    """What the run ran on and with; versions come from package metadata, so torch is not imported."""
    return {
        "cpu_count": os.cpu_count(),
        "python_version": platform.python_version(),
        "platform": platform.platform(terse=True),
        "torch_version": _package_version("torch"),
        "deepspeed_version": _package_version("deepspeed"),
        "onnxruntime_version": _package_version("onnxruntime"),
    }
