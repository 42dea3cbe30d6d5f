"""A site's Flower side: joins the federation and hands every request to the site's trainer process.

Started by `gallery_trainer.federated.site` with Flower's interpreter (`relay.flower_python()`), with two
inherited pipe descriptors. It holds no data and imports no torch: each `fit` and `evaluate` Flower
delivers goes down the pipe as a relay message (config and global weights) and the site's answer
(weights, example count, metrics) comes back up. It ends when the coordinator says the federation is
over, when it cannot reach the coordinator within `--max-wait` seconds, or as soon as the site's
process is gone (a killed site leaves no Flower connection behind).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ["FLWR_TELEMETRY_ENABLED"] = "0"  # before flwr is imported: it reads this once

import flwr.compat.common.recorddict_compat as compat
import grpc
import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.client import NumPyClient, start_client
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.supercore.grpc import GRPC_MAX_MESSAGE_LENGTH

from gallery_common.site_tokens import SITE_CERTIFICATE_ENV, SITE_PRIVATE_KEY_ENV, SITE_TOKEN_ENV, site_metadata
from gallery_trainer.federated.relay import FederationError, read_message, write_message
from gallery_trainer.federated.secure import MESSAGE_PHASE, decode, encode, set_identity

Config = dict[str, Any]


class RelayClient(NumPyClient):
    """A Flower NumPy client whose training and evaluation happen in the site's trainer process."""

    def __init__(self, to_site: Any, from_site: Any) -> None:
        self.to_site = to_site
        self.from_site = from_site
        self.lock = threading.Lock()
        # secure aggregation keeps its keys and shares here from one stage to the next
        self.context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})

    def _ask(self, op: str, parameters: list[np.ndarray], config: Config) -> tuple[dict[str, Any], list[np.ndarray]]:
        with self.lock:
            write_message(self.to_site, {"op": op, "config": dict(config)}, parameters)
            header, arrays = read_message(self.from_site)
        if header.get("error"):
            raise FederationError(str(header["error"]))
        return header, arrays

    def get_parameters(self, config: Config) -> list[np.ndarray]:
        return []  # the coordinator always starts the weights itself

    def fit(self, parameters: list[np.ndarray], config: Config) -> tuple[list[np.ndarray], int, Config]:
        if config.get("phase") == MESSAGE_PHASE:  # a stage of secure aggregation, as a Flower Message
            reply = secaggplus_mod(decode(bytes(config["message"])), self.context, self._train_message)
            return [], 0, {"message": encode(reply)}
        header, arrays = self._ask("fit", parameters, config)
        return arrays, int(header["examples"]), dict(header["metrics"])

    def _train_message(self, message: Message, context: Context) -> Message:
        """What `secaggplus_mod` calls to train: the site's `fit`, as a Message reply it then masks."""
        ins = compat.recorddict_to_fitins(message.content, keep_input=True)
        arrays, examples, metrics = self.fit(parameters_to_ndarrays(ins.parameters), dict(ins.config))
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), examples, metrics)
        return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=message)

    def evaluate(self, parameters: list[np.ndarray], config: Config) -> tuple[float, int, Config]:
        header, _ = self._ask("evaluate", parameters, config)
        return float(header["loss"]), int(header["examples"]), dict(header["metrics"])


class _CallDetails(
    namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
    grpc.ClientCallDetails,
):
    """A call's details with more metadata (gRPC's own are not meant to be built)."""


class SiteToken(grpc.StreamStreamClientInterceptor):  # type: ignore[misc]
    """Adds the site's token and name to the connection (Flower's streaming `Join`), which the coordinator
    checks before it admits the site (`gallery_common.site_tokens`)."""

    def __init__(self, name: str, token: str) -> None:
        self.metadata = site_metadata(name, token)

    def intercept_stream_stream(
        self, continuation: Any, details: grpc.ClientCallDetails, request_iterator: Iterator[Any]
    ) -> Any:
        with_token = _CallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), *self.metadata],
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )
        return continuation(with_token, request_iterator)


def send_site_token(name: str, token: str) -> None:
    """Flower's legacy connection (`grpc_connection`) builds its channel with no call metadata of ours: the
    channel it creates is wrapped with `SiteToken` (flwr is pinned in requirements/flower.txt; the
    federated tests fail should a release move `create_channel`)."""
    from flwr.compat.client.grpc_client import connection

    create_channel = connection.create_channel

    def with_token(*args: Any, **kwargs: Any) -> grpc.Channel:
        return grpc.intercept_channel(create_channel(*args, **kwargs), SiteToken(name, token))

    connection.create_channel = with_token


def present_certificate(certificate: bytes, private_key: bytes) -> None:
    """Flower's legacy connection makes its TLS channel from the root certificate alone: the channel is made
    here with the site's certificate and key as well, so a coordinator that asks sites for certificates
    (mutual TLS) can check it (Flower's channel options kept; flwr is pinned)."""
    from flwr.compat.client.grpc_client import connection

    def with_certificate(
        server_address: str,
        insecure: bool,
        root_certificates: bytes | None = None,
        max_message_length: int = GRPC_MAX_MESSAGE_LENGTH,
        interceptors: Any = None,
    ) -> grpc.Channel:
        if insecure:
            raise FederationError("a site's certificate is shown over TLS: give the coordinator's --root-certificate")
        credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate)
        options = [
            ("grpc.max_send_message_length", max_message_length),
            ("grpc.max_receive_message_length", max_message_length),
        ]
        channel = grpc.secure_channel(server_address, credentials, options=options)
        return grpc.intercept_channel(channel, *interceptors) if interceptors else channel

    connection.create_channel = with_certificate


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--federation", required=True, help="the coordinator's host:port")
    parser.add_argument("--fd-in", type=int, required=True, help="pipe the site's answers arrive on")
    parser.add_argument("--fd-out", type=int, required=True, help="pipe the requests go out on")
    parser.add_argument("--max-wait", type=float, default=300.0, help="seconds to keep trying to reach the coordinator")
    parser.add_argument("--root-certificate", type=Path, help="PEM the coordinator's TLS certificate chains to")
    parser.add_argument("--site", help="the site's name, sent with its token (GALLERY_SITE_TOKEN) when it has one")
    args = parser.parse_args(argv)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    set_identity(node_id=0)
    # the site's certificate and key (PEM) come by environment, as its token does
    certificate, key = os.environ.pop(SITE_CERTIFICATE_ENV, ""), os.environ.pop(SITE_PRIVATE_KEY_ENV, "")
    if certificate and key:
        present_certificate(certificate.encode(), key.encode())
    token = os.environ.pop(SITE_TOKEN_ENV, "")
    if token and args.site:
        send_site_token(args.site, token)
    with os.fdopen(args.fd_out, "wb") as to_site, os.fdopen(args.fd_in, "rb") as from_site:
        client = RelayClient(to_site, from_site)
        try:
            start_client(
                server_address=args.federation,
                client=client.to_client(),
                root_certificates=args.root_certificate.read_bytes() if args.root_certificate else None,
                insecure=args.root_certificate is None,
                max_wait_time=args.max_wait,
            )
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
            write_message(to_site, {"op": "refused", "reason": exc.details()})
            sys.exit(3)
        write_message(to_site, {"op": "done"})


if __name__ == "__main__":
    main()
