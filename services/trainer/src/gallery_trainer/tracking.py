"""Experiment tracking: parameters, metrics records, comparisons of runs.

Training appends one JSON object per line to `metrics.jsonl` (`kind` "step" or "epoch", with
`step`, `epoch`, `time` and numeric metrics); the tracker copies those records into `RunMetric`
rows as they appear so a run in progress can already be queried and plotted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from .records import MetricPair, Run, RunComparison, RunMetric, RunMetrics, RunPublic, ValuePair

MetricsRecord = dict[str, Any]
_RECORD_FIELDS = ("kind", "step", "epoch", "time")


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as dotted keys (`training.optimizer.lr`); lists and scalars are leaves.

    An empty mapping is kept as a leaf so that `{}` and a missing section still differ.
    """
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, name + "."))
        else:
            flat[name] = value
    return flat


class MetricsTail:
    """Reads the records appended to a metrics.jsonl since the last call; a half-written line waits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self.count = 0

    def read_new(self) -> list[MetricsRecord]:
        try:
            with open(self.path, "rb") as file:
                file.seek(self._offset)
                chunk = file.read()
        except FileNotFoundError:
            return []
        complete = chunk.rfind(b"\n") + 1
        self._offset += complete
        records = []
        for line in chunk[:complete].splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn write from a killed rank; the following lines are still good
            if isinstance(record, dict):
                records.append(record)
        self.count += len(records)
        return records


def metric_rows(run_id: str, records: Iterable[MetricsRecord], first_seq: int) -> list[RunMetric]:
    """One `RunMetric` per finite numeric value of each record, numbered from `first_seq`."""
    rows = []
    for seq, record in enumerate(records, start=first_seq):
        kind = str(record.get("kind", "step"))
        for key, value in record.items():
            if key in _RECORD_FIELDS or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not math.isfinite(value):
                continue
            rows.append(
                RunMetric(
                    run_id=run_id,
                    seq=seq,
                    kind=kind,
                    step=_int_or_none(record.get("step")),
                    epoch=_int_or_none(record.get("epoch")),
                    time=_float_or_none(record.get("time")),
                    key=key,
                    value=float(value),
                )
            )
    return rows


def record_metrics(engine: Engine, run_id: str, tail: MetricsTail) -> int:
    """Copy the records new in `tail` into the database; returns how many were added."""
    first = tail.count
    records = tail.read_new()
    if records:
        with Session(engine) as session:
            session.add_all(metric_rows(run_id, records, first))
            session.commit()
    return len(records)


def load_records(session: Session, run_id: str) -> list[MetricsRecord]:
    """A run's metrics records, in the order training wrote them."""
    rows = session.exec(
        select(RunMetric).where(RunMetric.run_id == run_id).order_by(col(RunMetric.seq), col(RunMetric.id))
    ).all()
    records: dict[int, MetricsRecord] = {}
    for row in rows:
        record = records.setdefault(row.seq, {"kind": row.kind, "step": row.step, "epoch": row.epoch, "time": row.time})
        record[row.key] = row.value
    return list(records.values())


def run_metrics(session: Session, run_id: str) -> RunMetrics:
    records = load_records(session, run_id)
    return RunMetrics(
        run_id=run_id,
        steps=[r for r in records if r["kind"] == "step"],
        epochs=[r for r in records if r["kind"] == "epoch"],
    )


def compare_runs(a: Run, b: Run) -> RunComparison:
    """Parameters that differ (a key only one run has counts as differing) and both runs' metrics."""
    differ: dict[str, ValuePair] = {}
    same = 0
    for key in sorted(set(a.params) | set(b.params)):
        left, right = a.params.get(key), b.params.get(key)
        if left == right and (key in a.params) == (key in b.params):
            same += 1
        else:
            differ[key] = ValuePair(a=left, b=right)
    metrics = {}
    for key in sorted(set(a.metrics) | set(b.metrics)):
        left_value, right_value = a.metrics.get(key), b.metrics.get(key)
        delta = right_value - left_value if left_value is not None and right_value is not None else None
        metrics[key] = MetricPair(a=left_value, b=right_value, delta=delta)
    return RunComparison(a=RunPublic.of(a), b=RunPublic.of(b), params_differ=differ, params_same=same, metrics=metrics)


def _int_or_none(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _float_or_none(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
