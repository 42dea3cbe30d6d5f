"""`gallery site run`: this machine takes part in a federated training job as one site.

The site's work (its data, local training with the trainer's model code, Flower's relay) is the trainer
package's `gallery_trainer.federated.site`; the CLI imports no service, so it becomes that process by
module name, as `gallery up` starts the services. Killing the command kills the site.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from .console import fail

SITE_MODULE = "gallery_trainer.federated.site"

app = typer.Typer(help="Federated training: run a site that keeps its data.", no_args_is_help=True)


@app.command()
def run(
    federation: Annotated[str, typer.Option(help="The coordinator's host:port (the job's engine.address).")],
    site: Annotated[str, typer.Option(help="This site's name (letters, digits, '_', '-').")],
    data: Annotated[
        Path,
        typer.Option(exists=True, file_okay=False, help="Folder with this site's train.npz and validation.npz."),
    ],
    max_wait: Annotated[float, typer.Option(min=1, help="Seconds to keep trying to reach the coordinator.")] = 300.0,
    root_certificate: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="PEM the coordinator's TLS certificate chains to (TLS on)."),
    ] = None,
) -> None:
    """Train on this site's data for the federation until the job ends; only model updates leave it."""
    try:
        found = importlib.util.find_spec(SITE_MODULE) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        fail("a site needs the trainer package (modelgallery-trainer) installed beside the CLI", 2)
    command = [sys.executable, "-m", SITE_MODULE, "--federation", federation, "--site", site, "--data", str(data)]
    tls = ["--root-certificate", str(root_certificate)] if root_certificate is not None else []
    os.execv(sys.executable, [*command, "--max-wait", str(max_wait), *tls])
