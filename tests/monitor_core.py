"""The monitor's core on a fresh SQLite file, for the tests that drive it without HTTP or NATS."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gallery_common.db import make_engine
from gallery_monitor.core import Monitor
from gallery_monitor.migrations import upgrade
from gallery_monitor.quality import QualityStore
from gallery_monitor.records import Slo
from gallery_monitor.references import ReferenceCache, TrainingData
from gallery_monitor.samples import SampleBook
from gallery_monitor.series import SeriesBook

SLO = Slo(p99_ms=100, error_rate=0.01, drift_psi=0.2, drift_min_samples=200, window_s=60)


def sqlite_monitor(
    database: Path,
    load_split: Callable[[str, int], TrainingData],
    clock: Callable[[], float],
    **options: Any,
) -> Monitor:
    """A monitor on `database` (migrated to head) with the tests' SLO (unless `default_slo` is given), training
    references from `load_split`, a week of outcomes, and `options` for the rest (`text_psi_threshold`, ...)."""
    engine = make_engine(f"sqlite:///{database}")
    upgrade(engine)
    options.setdefault("default_slo", SLO)
    return Monitor(
        engine,
        series=SeriesBook(900, 5),
        samples=SampleBook(5000),
        references=ReferenceCache(load_split, max_rows=10_000, retry_s=30),
        quality=QualityStore(engine, retention_s=7 * 86400),
        ks_alpha=0.001,
        min_requests=20,
        clock=clock,
        **options,
    )
