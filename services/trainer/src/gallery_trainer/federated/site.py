"""One site of a federated job: its own data in its own folder, local training, only weights and counts out.

`python -m gallery_trainer.federated.site --federation HOST:PORT --site NAME --data FOLDER` (what
`gallery site run` starts). The folder holds `train.npz` and `validation.npz` (`x` FP32 features, `y`
class labels, the shared split format). The site starts Flower's relay (`flower_client`) in Flower's
interpreter and answers its requests here, with the trainer's own code: the network from
`gallery_common.nn.build_network`, the optimiser and loss of every engine, the same batching and
augmentation. What leaves the site: per-feature sums, sums of squares and the row count (once, for the
standardisation), the locally trained weights, the validation loss and accuracy, the example counts and
a sha256 fingerprint of its files; never a row.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gallery_common.contracts import NpzRefused, read_split
from gallery_common.netutil import wait_for_port
from gallery_common.nn import build_network
from gallery_common.site_tokens import SITE_CERTIFICATE_ENV, SITE_PRIVATE_KEY_ENV, SITE_TOKEN_ENV
from gallery_common.telemetry import get_logger
from gallery_trainer.augment import Augmenter
from gallery_trainer.engine.batches import ShardedBatches
from gallery_trainer.engine.optim import make_loss, make_optimizer
from gallery_trainer.federated.relay import (
    PEM_BEGIN,
    SITE_NAME_PATTERN,
    FederationError,
    Message,
    RelayClosed,
    flower_environment,
    flower_python,
    pem_bytes,
    read_message,
    write_message,
)
from gallery_trainer.prepare import FeatureTransform, Split
from gallery_trainer.spec import JobSpec, parse_spec

log = get_logger(__name__)
SITE_FILES = ("train.npz", "validation.npz")


@dataclass
class SiteData:
    """A site's examples and the fingerprint that names them in the model's lineage."""

    name: str
    train: Split
    validation: Split
    fingerprint: str


def load_site_data(name: str, folder: Path) -> SiteData:
    """Read the site's `train.npz` and `validation.npz`; FederationError says what is wrong with them."""
    if not re.fullmatch(SITE_NAME_PATTERN, name):
        raise FederationError(f"site: {name!r} is not a site name (letters, digits, '_' and '-', at most 64)")
    digest = hashlib.sha256()
    splits = []
    for filename in SITE_FILES:
        path = folder / filename
        if not path.is_file():
            raise FederationError(f"site {name}: {path} is missing (a site folder holds {' and '.join(SITE_FILES)})")
        try:
            split = read_split(path)
        except NpzRefused as exc:
            raise FederationError(f"site {name}: {exc}") from None
        digest.update(path.read_bytes())
        splits.append(Split(split.x, split.y.astype(np.int64)))
    train, validation = splits
    if train.x.shape[1] != validation.x.shape[1]:
        raise FederationError(f"site {name}: train.npz and validation.npz have different numbers of features")
    return SiteData(name, train, validation, digest.hexdigest())


@dataclass(frozen=True)
class SiteJob:
    """What the coordinator tells every site about the job: the spec and the data's shape."""

    spec: JobSpec
    n_features: int
    n_outputs: int
    image_shape: tuple[int, int, int] | None


@cache
def _site_job(text: str) -> SiteJob:
    doc = json.loads(text)
    shape = doc["image_shape"]
    return SiteJob(
        parse_spec(doc["spec"]), int(doc["n_features"]), int(doc["n_outputs"]), tuple(shape) if shape else None
    )  # type: ignore[arg-type]


def _transform(config: dict[str, Any]) -> FeatureTransform:
    named = json.loads(str(config["transform"]))
    return FeatureTransform(np.asarray(named["mean"], np.float32), np.asarray(named["scale"], np.float32))


class Site:
    """Answers the coordinator's requests from the site's own data."""

    def __init__(self, data: SiteData) -> None:
        self.data = data

    def handle(self, header: dict[str, Any], arrays: list[np.ndarray]) -> Message:
        config = header.get("config", {})
        if header.get("op") == "fit" and config.get("phase") == "stats":
            return self.statistics()
        job = _site_job(str(config["job"]))
        self._check(job)
        network = self._network(job, _transform(config), arrays)
        if header.get("op") == "fit":
            return self.train(job, network, config)
        return self.evaluate(network)

    def statistics(self) -> Message:
        """Per-feature sums and sums of squares of the training rows, their count and the fingerprint."""
        x = self.data.train.x.astype(np.float64)
        metrics = {"site": self.data.name, "fingerprint": self.data.fingerprint}
        return {"examples": len(x), "metrics": metrics}, [x.sum(axis=0), np.square(x).sum(axis=0)]

    def _check(self, job: SiteJob) -> None:
        train = self.data.train
        if train.x.shape[1] != job.n_features:
            raise FederationError(
                f"site {self.data.name}: its data has {train.x.shape[1]} features, the job {job.n_features}"
            )
        for split in (train, self.data.validation):
            if split.y.min() < 0 or split.y.max() >= job.n_outputs:
                raise FederationError(f"site {self.data.name}: labels outside the job's {job.n_outputs} classes")

    def _network(self, job: SiteJob, transform: FeatureTransform, weights: list[np.ndarray]) -> torch.nn.Sequential:
        network = build_network(job.spec.model, transform, job.n_outputs, job.image_shape)
        params = list(network.parameters())
        if len(params) != len(weights) or any(p.shape != w.shape for p, w in zip(params, weights, strict=False)):
            raise FederationError(f"site {self.data.name}: the global weights do not fit the job's model")
        with torch.no_grad():
            for param, value in zip(params, weights, strict=True):
                param.copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)))
        return network

    def train(self, job: SiteJob, network: torch.nn.Sequential, config: dict[str, Any]) -> Message:
        """`local_epochs` epochs over the site's training rows from the global weights (FedProx: with the
        proximal term `mu / 2 * ||w - w_global||^2`); the new weights and the mean training loss."""
        training, train = job.spec.training, self.data.train
        server_round, epochs = int(config["round"]), int(config["local_epochs"])
        mu = float(config.get("proximal_mu", 0.0))
        torch.manual_seed(training.seed * 1_000_003 + server_round)
        anchor = [p.detach().clone() for p in network.parameters()]
        optimizer = make_optimizer(network.parameters(), training)
        loss_fn = make_loss("classification")
        batches = ShardedBatches(
            train.x,
            train.y,
            batch_size=min(training.batch_size, len(train)),
            accumulation=1,
            dp_rank=0,
            dp_size=1,
            seed=training.seed,
        )
        network.train()
        losses = []
        for local_epoch in range((server_round - 1) * epochs + 1, server_round * epochs + 1):
            augmenter = Augmenter(
                job.spec.preparation.augmentation,
                image_shape=job.image_shape,
                feature_std=train.x.std(axis=0),
                n_classes=job.n_outputs,
                seed=training.seed * 1_000 + local_epoch,
            )
            for micro in batches.epoch(local_epoch):
                x, y = augmenter(*micro[0]) if augmenter.active else micro[0]
                optimizer.zero_grad()
                loss = loss_fn(network(x), y)
                if mu:
                    loss = loss + mu / 2 * sum(
                        ((p - a) ** 2).sum() for p, a in zip(network.parameters(), anchor, strict=True)
                    )
                loss.backward()
                if training.gradient_clipping:
                    torch.nn.utils.clip_grad_norm_(network.parameters(), training.gradient_clipping)
                optimizer.step()
                losses.append(float(loss.detach()))
        weights = [p.detach().numpy().astype(np.float32) for p in network.parameters()]
        train_loss = float(np.mean(losses)) if losses else float("nan")
        log.info("site trained", site=self.data.name, round=server_round, examples=len(train), train_loss=train_loss)
        metrics = {"site": self.data.name, "fingerprint": self.data.fingerprint, "train_loss": train_loss}
        return {"examples": len(train), "metrics": metrics}, weights

    def evaluate(self, network: torch.nn.Sequential) -> Message:
        """Loss and accuracy of the global weights on the site's validation rows."""
        validation = self.data.validation
        network.eval()
        with torch.no_grad():
            outputs = network(torch.from_numpy(validation.x))
            y = torch.from_numpy(validation.y)
            loss = float(F.cross_entropy(outputs, y))
            accuracy = float((outputs.argmax(dim=1) == y).float().mean())
        metrics = {"site": self.data.name, "accuracy": accuracy, "loss": loss}
        return {"loss": loss, "examples": len(validation), "metrics": metrics}, []


def _wait_for_coordinator(name: str, address: str, max_wait: float) -> None:
    """Until the coordinator at `address` (host:port) accepts connections: a site may well start before
    its job's coordinator, and Flower's legacy transport gives up at the first refused connection."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise FederationError(f"site {name}: --federation {address!r} is not host:port")
    log.info("waiting for the coordinator", site=name, federation=address, max_wait_s=max_wait)
    if not wait_for_port(host.strip("[]"), int(port), timeout=max_wait):
        raise FederationError(f"site {name}: no coordinator answered at {address} within {max_wait:g} s (--max-wait)")


def site_token(name: str, token_file: Path | None) -> str | None:
    """The site's token: what `token_file` holds (one line), else `GALLERY_SITE_TOKEN`, else None (a
    federation that lists its sites refuses a site without one)."""
    if token_file is None:
        return os.environ.get(SITE_TOKEN_ENV) or None
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        raise FederationError(f"site {name}: cannot read its token file {token_file}: {exc.strerror}") from None
    if not token or "\n" in token:
        raise FederationError(f"site {name}: {token_file} must hold the site's token on one line")
    return token


def site_certificate(name: str, certificate: Path | None, private_key: Path | None) -> tuple[bytes, bytes] | None:
    """The site's certificate and private key (PEM) for mutual TLS: the files given, else
    `GALLERY_SITE_CERTIFICATE` and `GALLERY_SITE_PRIVATE_KEY` (each a PEM or the path of one), else None."""
    given = (
        (str(certificate) if certificate else "", str(private_key) if private_key else "")
        if certificate is not None or private_key is not None
        else (os.environ.get(SITE_CERTIFICATE_ENV, ""), os.environ.get(SITE_PRIVATE_KEY_ENV, ""))
    )
    if not any(given):
        return None
    if not all(given):
        raise FederationError(f"site {name}: a certificate and its private key go together")
    try:
        pems = (pem_bytes(given[0]), pem_bytes(given[1]))
    except OSError as exc:
        raise FederationError(f"site {name}: cannot read the site's certificate or key: {exc}") from None
    if not all(pem.lstrip().startswith(PEM_BEGIN.encode()) for pem in pems):
        raise FederationError(f"site {name}: the site's certificate and key must be PEM")
    return pems


def run_site(
    federation: str,
    name: str,
    folder: Path,
    *,
    max_wait: float = 300.0,
    root_certificate: Path | None = None,
    token: str | None = None,
    certificate: tuple[bytes, bytes] | None = None,
) -> int:
    """Take part in the federation at `federation` (host:port) until it ends; the relay's exit status.
    With `root_certificate` the connection is TLS, the coordinator's certificate checked against it; with
    `certificate` (the site's certificate and private key, PEM) the site shows it, for a coordinator that
    asks sites for certificates (mutual TLS); with `token` the site presents it and its name, and a
    coordinator that lists its sites admits it by them."""
    site = Site(load_site_data(name, folder))
    if root_certificate is not None and not root_certificate.is_file():
        raise FederationError(f"site {name}: {root_certificate} is not a readable certificate file")
    if certificate is not None and root_certificate is None:
        raise FederationError(f"site {name}: a site certificate is shown over TLS: give --root-certificate too")
    tls = ["--root-certificate", str(root_certificate)] if root_certificate is not None else []
    # the token and the private key go by environment, never on a command line others can read
    secrets = {SITE_TOKEN_ENV: token} if token else {}
    if certificate is not None:
        secrets |= {SITE_CERTIFICATE_ENV: certificate[0].decode(), SITE_PRIVATE_KEY_ENV: certificate[1].decode()}
    address = federation.removeprefix("grpc://")
    _wait_for_coordinator(name, address, max_wait)
    to_relay_r, to_relay_w = os.pipe()
    from_relay_r, from_relay_w = os.pipe()
    relay = subprocess.Popen(
        [
            str(flower_python()),
            "-m",
            "gallery_trainer.federated.flower_client",
            *("--federation", address),
            *("--fd-in", str(to_relay_r), "--fd-out", str(from_relay_w), "--max-wait", str(max_wait)),
            *tls,
            *("--site", name),
        ],
        pass_fds=(to_relay_r, from_relay_w),
        env={**flower_environment(), **secrets},
    )
    os.close(to_relay_r)
    os.close(from_relay_w)
    log.info("site started", site=name, federation=federation, examples=len(site.data.train))
    with os.fdopen(to_relay_w, "wb") as to_relay, os.fdopen(from_relay_r, "rb") as from_relay:
        while True:
            try:
                header, arrays = read_message(from_relay)
            except RelayClosed:
                break
            if header.get("op") == "done":
                break
            if header.get("op") == "refused":
                relay.wait()
                raise FederationError(f"site {name}: the coordinator at {address} refused it: {header.get('reason')}")
            try:
                reply = site.handle(header, arrays)
            except FederationError as exc:
                log.error("site cannot answer", site=name, error=str(exc))
                reply = ({"error": str(exc)}, [])
            write_message(to_relay, *reply)
    code = relay.wait()
    log.info("site finished", site=name, exit_code=code)
    return code


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one site of a federated training job.")
    parser.add_argument("--federation", required=True, help="the coordinator's address, host:port")
    parser.add_argument("--site", required=True, help="this site's name (letters, digits, '_', '-')")
    parser.add_argument("--data", required=True, type=Path, help="folder with train.npz and validation.npz")
    parser.add_argument("--max-wait", type=float, default=300.0, help="seconds to keep trying to reach the coordinator")
    parser.add_argument("--root-certificate", type=Path, help="PEM the coordinator's TLS certificate chains to")
    parser.add_argument("--token-file", type=Path, help=f"file with this site's token (else ${SITE_TOKEN_ENV})")
    parser.add_argument(
        "--certificate", type=Path, help=f"PEM: this site's certificate, for mutual TLS (else ${SITE_CERTIFICATE_ENV})"
    )
    parser.add_argument(
        "--private-key", type=Path, help=f"PEM: the private key of --certificate (else ${SITE_PRIVATE_KEY_ENV})"
    )
    args = parser.parse_args(argv)
    try:
        code = run_site(
            args.federation,
            args.site,
            args.data,
            max_wait=args.max_wait,
            root_certificate=args.root_certificate,
            token=site_token(args.site, args.token_file),
            certificate=site_certificate(args.site, args.certificate, args.private_key),
        )
        sys.exit(code)
    except FederationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
