"""Federated training on one machine: three site processes, each with its own non-IID share of digits,
train one model with the trainer's coordinator; one line per round, then the model's figures and lineage.

    python scripts/federated_demo.py [--spec examples/federated-digits.yaml] [--sites 3] [--alpha 0.5]

The coordinator runs here in-process (as the trainer service runs it in a job); each site is started with
`gallery site run`, its own process holding only its folder under .gallery/federated/ and its own token
(`gallery site token`: the coordinator admits only the listed sites). Nothing is published:
`gallery train examples/federated-digits.yaml` does the same through the running stack.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from gallery_common.netutil import free_port
from gallery_common.site_tokens import SITE_TOKENS_ENV
from gallery_trainer.federated.partition import write_site_folders
from gallery_trainer.pipeline import ProgressUpdate, run_job
from gallery_trainer.spec import parse_spec

REPO = Path(__file__).resolve().parents[1]
GALLERY = str(Path(sys.executable).with_name("gallery"))


def show(update: ProgressUpdate) -> None:
    metrics = update.metrics
    if update.phase == "training" and "round_seconds" in metrics:
        print(
            f"round {update.epoch:>3}/{update.epochs}: {int(metrics['sites'])} sites, "
            f"val accuracy {metrics.get('val_accuracy', float('nan')):.3f} "
            f"(worst site {metrics.get('worst_site_val_accuracy', float('nan')):.3f}), "
            f"{metrics['round_seconds']:.2f} s, {metrics['bytes_per_site'] / 1000:.0f} KB per site",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=REPO / "examples" / "federated-digits.yaml")
    parser.add_argument("--out", type=Path, default=REPO / ".gallery" / "federated")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration: smaller is less IID")
    args = parser.parse_args()
    port = free_port()
    doc = parse_spec(args.spec.read_text()).model_dump(mode="json")
    doc["engine"]["address"] = f"127.0.0.1:{port}"
    spec = parse_spec(doc)
    folders = write_site_folders(spec, args.out, n_sites=args.sites, alpha=args.alpha)
    # each site gets its own token; the coordinator admits only the listed sites, each under its name
    entries = []
    for name in folders:
        token = args.out / f"{name}.token"
        token.unlink(missing_ok=True)
        made = [GALLERY, "site", "token", name, "--output", str(token)]
        print("$", " ".join(made), flush=True)
        entries.append(subprocess.run(made, check=True, capture_output=True, text=True).stdout.split()[-1])
    os.environ[SITE_TOKENS_ENV] = ",".join(entries)
    print(f"{SITE_TOKENS_ENV}={os.environ[SITE_TOKENS_ENV][:40]}... (the coordinator's list)", flush=True)
    sites = []
    for name, folder in folders.items():
        command = [GALLERY, "site", "run", "--federation", f"127.0.0.1:{port}", "--site", name, "--data", str(folder)]
        command += ["--token-file", str(args.out / f"{name}.token")]
        print("$", " ".join(command), flush=True)
        log = open(args.out / f"{name}.log", "wb")  # noqa: SIM115 - the site writes it until it ends
        sites.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
    workdir = Path(tempfile.mkdtemp(prefix="federated-job-"))
    try:
        outputs = run_job(spec, workdir, on_progress=show)
    finally:
        for site in sites:
            if site.poll() is None:
                site.send_signal(signal.SIGTERM)
            site.wait(30)
    metrics = outputs.metrics
    print(f"test accuracy {metrics['test_accuracy']:.3f} on the coordinator's held-out split, which no site holds")
    assert outputs.federation is not None
    for site in outputs.federation.sites:
        print(f"  {site.name}: {site.examples} rows, fingerprint {site.data_fingerprint}, {site.rounds} rounds")
    print(f"model files in {workdir} (ONNX: {outputs.files['onnx'].name})")


if __name__ == "__main__":
    main()
