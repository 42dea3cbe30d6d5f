"""Federated training (issue 18): time and bytes per round, and what federation costs in accuracy.

    .venv/bin/python bench/federated.py [--spec examples/federated-digits.yaml] [--rounds 20] [--sites 3]
                                        [--alpha 0.5] [--strict]

Three `gallery site run` processes, each holding a non-IID (Dirichlet alpha) share of the spec's
training and validation rows, train with the trainer's coordinator (in this process, as a trainer job
runs it). Then the same spec trains centrally (the DeepSpeed engine, one rank) on the same rows for as
many epochs as a site trained in all (rounds x local_epochs), and both models are scored on the
coordinator's held-out test split, which no site holds. Target: the federated model within 2 points of
the central one.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from gallery_common.netutil import free_port
from gallery_trainer.federated.partition import write_site_folders
from gallery_trainer.pipeline import ProgressUpdate, run_job
from gallery_trainer.spec import JobSpec, parse_spec

REPO = Path(__file__).resolve().parents[1]
GALLERY = str(Path(sys.executable).with_name("gallery"))
TARGET_POINTS = 2.0


def federated(spec: JobSpec, work: Path, sites: int, alpha: float) -> tuple[float, list[dict[str, float]]]:
    """Test accuracy of the federated model and each round's figures."""
    folders = write_site_folders(spec, work / "sites", n_sites=sites, alpha=alpha)
    address = spec.engine.address
    processes = []
    for name, folder in folders.items():
        command = [GALLERY, "site", "run", "--federation", address, "--site", name, "--data", str(folder)]
        log = open(work / f"{name}.log", "wb")  # noqa: SIM115 - the site writes it until it ends
        processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
    rounds: list[dict[str, float]] = []

    def record(update: ProgressUpdate) -> None:
        if update.phase == "training" and "round_seconds" in update.metrics:
            rounds.append(dict(update.metrics))
            print(
                f"  round {update.epoch:>2}: val accuracy {update.metrics.get('val_accuracy', float('nan')):.3f}, "
                f"{update.metrics['round_seconds']:.2f} s",
                flush=True,
            )

    try:
        outputs = run_job(spec, work / "federated-job", on_progress=record)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            process.wait(30)
    return outputs.metrics["test_accuracy"], rounds


def central(spec: JobSpec, work: Path) -> float:
    """Test accuracy of the same model trained in one place on the same rows."""
    doc = spec.model_dump(mode="json")
    epochs = spec.engine.rounds * spec.engine.local_epochs
    doc["engine"] = {"kind": "deepspeed"}
    doc["training"]["epochs"] = epochs
    print(f"  central: {epochs} epochs, DeepSpeed, one rank", flush=True)
    return run_job(parse_spec(doc), work / "central-job").metrics["test_accuracy"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=REPO / "examples" / "federated-digits.yaml")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration: smaller is less IID")
    parser.add_argument("--rounds", type=int, default=20, help="rounds (the issue's budget: 20)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args()
    doc = parse_spec(args.spec.read_text()).model_dump(mode="json")
    doc["engine"]["address"] = f"127.0.0.1:{free_port()}"
    doc["engine"]["rounds"] = args.rounds
    spec = parse_spec(doc)
    with tempfile.TemporaryDirectory(prefix="bench-federated-") as tmp:
        work = Path(tmp)
        print(f"federated: {args.sites} sites, Dirichlet alpha {args.alpha}, {spec.engine.rounds} rounds", flush=True)
        fed_accuracy, rounds = federated(spec, work, args.sites, args.alpha)
        central_accuracy = central(spec, work)
    seconds = [r["round_seconds"] for r in rounds]
    per_site = [r["bytes_per_site"] for r in rounds]
    print()
    print(f"rounds {len(rounds)}; round time p50 {statistics.median(seconds):.2f} s, max {max(seconds):.2f} s")
    print(f"bytes per site per round: {statistics.mean(per_site) / 1000:.0f} KB (both ways)")
    gap = (central_accuracy - fed_accuracy) * 100
    ok = gap <= TARGET_POINTS
    print(f"test accuracy: federated {fed_accuracy:.3f}, central {central_accuracy:.3f} ({gap:+.1f} points)")
    print(f"{'PASS' if ok else 'MISS'}  federated within {TARGET_POINTS:g} points of central training")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
