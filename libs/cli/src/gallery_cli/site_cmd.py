"""`gallery site run`: this machine takes part in a federated training job as one site. `gallery site token`:
a site's secret token and the entry the trainer admits it by (`gallery_common.site_tokens`).

The site's work (its data, local training with the trainer's model code, Flower's relay) is the trainer
package's `gallery_trainer.federated.site`; the CLI imports no service, so it becomes that process by
module name, as `gallery up` starts the services. Killing the command kills the site.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from gallery_common.site_tokens import (
    SITE_NAME_PATTERN,
    SITE_TOKEN_ENV,
    SITE_TOKENS_ENV,
    new_site_token,
    token_digest,
)

from .console import fail

SITE_MODULE = "gallery_trainer.federated.site"

app = typer.Typer(
    help="Federated training: run a site that keeps its data, or make a site's token.", no_args_is_help=True
)


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
    token_file: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help=f"File holding this site's token (gallery site token), else ${SITE_TOKEN_ENV}; a federation "
            "that lists its sites admits only them.",
        ),
    ] = None,
    certificate: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="PEM: this site's certificate (its common name the site's name), for a federation that asks "
            "sites for certificates (mutual TLS); with --private-key and --root-certificate.",
        ),
    ] = None,
    private_key: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="PEM: the private key of --certificate.")
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
    token = ["--token-file", str(token_file)] if token_file is not None else []
    # the site's module checks that the two come together, as it does when they come by environment
    shown = [*(["--certificate", str(certificate)] if certificate else [])]
    shown += ["--private-key", str(private_key)] if private_key else []
    os.execv(sys.executable, [*command, "--max-wait", str(max_wait), *tls, *token, *shown])


@app.command()
def token(
    site: Annotated[str, typer.Argument(help="The site's name, as it runs: gallery site run --site NAME.")],
    output: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="Write the token to this file (mode 600) instead of printing it."),
    ] = None,
) -> None:
    """Make a secret token for one site, and the entry the trainer admits it by.

    The site keeps the token (gallery site run --token-file, or GALLERY_SITE_TOKEN); the trainer keeps only
    its sha256, in GALLERY_FEDERATION_SITE_TOKENS (comma-separated entries). Once that setting lists any
    site, a federated job admits only the listed sites, each under its own name."""
    if not re.fullmatch(SITE_NAME_PATTERN, site):
        fail(f"{site!r} is not a site name (letters, digits, '_' and '-', at most 64)", 2)
    secret = new_site_token()
    if output is not None:
        if output.exists():
            fail(f"{output} exists: a token is never written over", 1)
        descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as written:
            written.write(secret + "\n")
        typer.echo(f"token of site {site} written to {output} (give it to the site: --token-file {output})")
    else:
        typer.echo(f"token of site {site} (give it to the site; it is not kept anywhere else):")
        typer.echo(f"  {secret}")
    typer.echo(f"the trainer's entry for it (add to {SITE_TOKENS_ENV}, comma separated):")
    typer.echo(f"  {site}:{token_digest(secret)}")
