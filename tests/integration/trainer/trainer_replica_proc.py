"""One trainer replica as its own process: the real trainer app, settings from `GALLERY_*`, with training
replaced by a paced stand-in so a test can SIGKILL the process while a job trains.

usage: trainer_replica_proc.py [--epoch-seconds S]

The stand-in takes `training.epochs` epochs of S seconds each, reports progress like the real pipeline,
stops when cancelled, and writes the files a real run hands over (their content is not a model).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from gallery_common.artifacts import ArtifactStore
from gallery_common.events import Signature, TensorSpec
from gallery_common.settings import load_settings
from gallery_trainer.app import create
from gallery_trainer.failures import JobCancelled
from gallery_trainer.pipeline import JobOutputs, ProgressUpdate
from gallery_trainer.settings import TrainerSettings

ROLES = {"weights": "model.safetensors", "onnx": "model.onnx", "spec": "spec.json", "test_split": "test.npz"}


class PacedTraining:
    def __init__(self, epoch_seconds: float) -> None:
        self.epoch_seconds = epoch_seconds

    def __call__(
        self,
        spec: Any,
        workdir: Path,
        *,
        store: ArtifactStore | None = None,
        on_progress: Callable[[ProgressUpdate], None] | None = None,
        cancel: threading.Event | None = None,
        resume: bool = False,
    ) -> JobOutputs:
        assert on_progress is not None and cancel is not None
        epochs = spec.training.epochs
        on_progress(ProgressUpdate("preparing", 0, epochs, 0))
        with open(workdir / "metrics.jsonl", "a") as metrics:
            for epoch in range(1, epochs + 1):
                if cancel.wait(self.epoch_seconds):
                    raise JobCancelled("cancelled")
                metrics.write(json.dumps({"kind": "epoch", "epoch": epoch, "step": epoch, "train_loss": 1 / epoch}))
                metrics.write("\n")
                metrics.flush()
                on_progress(ProgressUpdate("training", epoch, epochs, epoch, {"train_loss": 1 / epoch}))
        files = {}
        for role, name in ROLES.items():
            (workdir / name).write_bytes(f"{spec.name} {role}".encode())
            files[role] = workdir / name
        on_progress(ProgressUpdate("done", epochs, epochs, epochs))
        return JobOutputs(
            files=files,
            signature=Signature(
                inputs=[TensorSpec(name="features", datatype="FP32", shape=[-1, 4])],
                outputs=[TensorSpec(name="logits", datatype="FP32", shape=[-1, 3])],
            ),
            metrics={"test_accuracy": 0.9},
            dataset_fingerprint="f" * 64,
            config_hash="c" * 64,
            leakage={},
            task="classification",
            class_names=["setosa", "versicolor", "virginica"],
            engine="paced stand-in",
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epoch-seconds", type=float, default=0.2)
    args = parser.parse_args()
    settings = load_settings(TrainerSettings)
    app = create(settings, train=PacedTraining(args.epoch_seconds))
    started = time.monotonic()
    uvicorn.run(app, host="127.0.0.1", port=settings.port, log_level="warning")
    print(f"stopped after {time.monotonic() - started:.1f}s", flush=True)


if __name__ == "__main__":
    main()
