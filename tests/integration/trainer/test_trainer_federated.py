"""Federated training end to end: three site processes, each with its own non-IID share of digits, train
one model through the trainer's coordinator; the trainer's process never opens a site's files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from federation_harness import federated_spec, site_folders, sites_running

from gallery_common.netutil import free_port
from gallery_trainer.curves import render_curves
from gallery_trainer.engine.job import load_split
from gallery_trainer.export import onnx_outputs
from gallery_trainer.pipeline import run_job
from gallery_trainer.prepare import Split
from gallery_trainer.publish import trained_payload

OPENED: list[str] = []
WATCHING = [False]


def _record_opens(event: str, args: tuple[Any, ...]) -> None:
    if WATCHING[0] and event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], str | Path):
        OPENED.append(str(args[0]))


sys.addaudithook(_record_opens)


def test_three_sites_train_a_model_the_trainer_never_sees_the_rows_of(tmp_path: Path) -> None:
    port = free_port()
    spec = federated_spec(port, rounds=15, min_sites=3)
    folders = site_folders(spec, tmp_path / "sites")
    workdir = tmp_path / "job"
    with sites_running(port, folders, tmp_path, through_cli=("site-1",)) as sites:
        OPENED.clear()
        WATCHING[0] = True
        try:
            outputs = run_job(spec, workdir)
        finally:
            WATCHING[0] = False
        exits = {name: process.wait(30) for name, process in sites.items()}
    # every site ended with the federation, the one started by `gallery site run` too
    assert exits == {"site-1": 0, "site-2": 0, "site-3": 0}
    sites_root = str((tmp_path / "sites").resolve())
    assert OPENED, "the audit hook saw no file opened at all"
    assert not [path for path in OPENED if str(Path(path).resolve()).startswith(sites_root)]

    metrics = outputs.metrics
    assert metrics["test_accuracy"] >= 0.9, metrics
    assert metrics["rounds_run"] == 15 and metrics["sites"] == 3
    assert metrics["onnx_parity_max_abs_diff"] < 1e-4
    test = load_split(outputs.files["test_split"])
    predicted = onnx_outputs(outputs.files["onnx"], test.x).argmax(axis=1)
    assert float((predicted == test.y).mean()) == metrics["test_accuracy"]

    # the standardisation is the one of all the sites' training rows, computed from their sums alone
    rows = [load_split(folder / "train.npz") for folder in folders.values()]
    pooled = Split(np.concatenate([r.x for r in rows]), np.concatenate([r.y for r in rows]))
    stored = json.loads(outputs.files["spec"].read_text())
    assert np.allclose(stored["preprocessing"]["mean"], pooled.x.mean(axis=0), atol=1e-5)
    assert stored["engine"]["engine"] == "federated"

    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(1, 16))
    for record in records:
        assert record["sites"] == 3 and record["round_seconds"] > 0 and record["bytes_per_site"] > 0
        for name in folders:
            assert {f"site.{name}.val_accuracy", f"site.{name}.train_loss", f"site.{name}.bytes"} <= record.keys()
        worst = min(record[f"site.{name}.val_accuracy"] for name in folders)
        assert record["worst_site_val_accuracy"] == worst
    first_over = next((r["round"] for r in records if r["val_accuracy"] >= 0.9), None)
    print(
        f"\nfederated digits: validation accuracy 0.9 first at round {first_over}, test accuracy "
        f"{metrics['test_accuracy']:.3f} after 15; {metrics['round_seconds']:.2f} s and "
        f"{metrics['bytes_per_site_per_round']:.0f} bytes per site per round"
    )

    payload = trained_payload(
        model=spec.name, project="default", run_id="run-1", job_id="job-1", outputs=outputs, artifacts={}
    )
    federation = payload.lineage.federation
    assert federation is not None and federation.kind == "federated"
    assert (federation.strategy, federation.rounds, federation.min_sites) == ("fedavg", 15, 3)
    assert {site.name: site.examples for site in federation.sites} == {
        n: len(r.y) for n, r in zip(folders, rows, strict=True)
    }
    assert all(site.data_fingerprint and len(site.data_fingerprint) == 64 for site in federation.sites)
    assert payload.metrics["worst_site_val_accuracy"] == records[-1]["worst_site_val_accuracy"]
    assert render_curves(records, title="federated")[:8] == b"\x89PNG\r\n\x1a\n"
