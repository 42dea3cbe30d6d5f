"""Parameters flattened, metrics tailed as training writes them, runs compared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sqlmodel import Session

from gallery_common.db import make_engine
from gallery_trainer.migrations import upgrade
from gallery_trainer.records import Run
from gallery_trainer.tracking import MetricsTail, compare_runs, flatten_params, record_metrics, run_metrics
from gallery_trainer.tracking_system import PeakRssMonitor


def test_flatten_params_gives_dotted_keys_with_lists_and_empty_sections_as_leaves() -> None:
    spec = {
        "name": "iris",
        "model": {"hidden": [16, 8], "activation": "relu"},
        "training": {"optimizer": "adam", "schedule": {"kind": "cosine", "warmup_steps": 10}},
        "preparation": {"augmentation": {}},
        "search": None,
    }
    assert flatten_params(spec) == {
        "name": "iris",
        "model.hidden": [16, 8],
        "model.activation": "relu",
        "training.optimizer": "adam",
        "training.schedule.kind": "cosine",
        "training.schedule.warmup_steps": 10,
        "preparation.augmentation": {},
        "search": None,
    }


def test_metrics_tail_reads_only_complete_new_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.read_new() == []  # training has not written anything yet
    first = {"kind": "step", "step": 1, "epoch": 1, "time": 0.1, "train_loss": 1.5, "lr": 0.01}
    with open(path, "w") as out:
        out.write(json.dumps(first) + "\n" + '{"kind": "epoch", "step": 2, "ep')
    assert tail.read_new() == [first]
    with open(path, "a") as out:
        out.write('och": 1, "val_accuracy": 0.5}\nnot json\n')
    assert tail.read_new() == [{"kind": "epoch", "step": 2, "epoch": 1, "val_accuracy": 0.5}]
    assert tail.read_new() == []
    assert tail.count == 2


def test_recorded_metrics_come_back_as_the_records_training_wrote(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 't.db'}")
    upgrade(engine)
    records = [
        {"kind": "step", "step": 1, "epoch": 1, "time": 0.5, "train_loss": 1.2, "lr": 0.01, "samples_per_sec": 900.0},
        {
            "kind": "epoch",
            "step": 1,
            "epoch": 1,
            "time": 0.6,
            "train_loss": 1.1,
            "lr": 0.01,
            "val_loss": 1.3,
            "val_accuracy": 0.4,
            "note": "text is not a metric",
            "nan": float("nan"),
        },
        {"kind": "step", "step": 2, "epoch": 2, "time": 1.0, "train_loss": 0.9, "lr": 0.005, "samples_per_sec": 950.0},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    tail = MetricsTail(path)
    assert record_metrics(engine, "run1", tail) == 3
    assert record_metrics(engine, "run1", tail) == 0
    with Session(engine) as session:
        metrics = run_metrics(session, "run1")
    assert metrics.steps == [records[0], records[2]]
    expected_epoch = {k: v for k, v in records[1].items() if k not in ("note", "nan")}
    assert metrics.epochs == [expected_epoch]


def test_compare_shows_differing_params_and_metrics_side_by_side() -> None:
    a = Run(
        id="a",
        job_id="j1",
        model="iris",
        params={"training.learning_rate": 0.01, "model.hidden": [8], "training.epochs": 5, "only.a": 1},
        metrics={"val_accuracy": 0.8, "test_accuracy": 0.75},
    )
    b = Run(
        id="b",
        job_id="j2",
        model="iris",
        params={"training.learning_rate": 0.1, "model.hidden": [8], "training.epochs": 5},
        metrics={"val_accuracy": 0.9, "val_loss": 0.3},
    )
    diff = compare_runs(a, b)
    assert {k: (v.a, v.b) for k, v in diff.params_differ.items()} == {
        "training.learning_rate": (0.01, 0.1),
        "only.a": (1, None),
    }
    assert diff.params_same == 2
    assert diff.metrics["val_accuracy"].delta is not None
    assert round(diff.metrics["val_accuracy"].delta, 9) == 0.1
    assert (diff.metrics["test_accuracy"].a, diff.metrics["test_accuracy"].b) == (0.75, None)
    assert diff.metrics["test_accuracy"].delta is None
    assert diff.a.id == "a" and diff.b.id == "b"


def test_peak_rss_counts_the_rank_processes_not_their_launcher() -> None:
    rank = "b = bytearray(80 * 2**20); import time; time.sleep(1.5)"
    launcher = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {rank!r}])"
    with PeakRssMonitor(interval=0.1) as monitor:
        subprocess.run([sys.executable, "-c", launcher], check=True)
    figures = monitor.figures()
    assert figures["peak_rss_scope"] == "rank processes"
    assert 80 * 2**20 <= figures["peak_rss_bytes"] < 160 * 2**20
    assert figures["peak_rss_all_children_bytes"] > figures["peak_rss_bytes"]
