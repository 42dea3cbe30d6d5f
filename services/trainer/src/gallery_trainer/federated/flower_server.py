"""The coordinator's Flower side: the rounds of a federated job, run in Flower's interpreter.

`python -m gallery_trainer.federated.flower_server WORKDIR`, started by the trainer with the plan it wrote
(`federation_plan.json`, `initial_weights.relay`). Flower's legacy gRPC Fleet API (its `FlowerServiceServicer`, the
`grpc-bidi` transport that `flwr.client.start_client` speaks) carries the rounds; FedAvg or FedProx
aggregates. Flower's current deployment (SuperLink, SuperNodes, `flwr run`) is not used: a run there is a
FAB that SuperLink's executor installs and starts in processes of its own, away from the trainer's job
(its progress, cancel, tracking), and a ClientApp started by a SuperNode cannot reach the site's trainer
process holding the data. The legacy API keeps the round loop here, under the job.

Round 0 gathers each site's feature sums, sums of squares and row count and turns them into the
standardisation (rows never leave a site). Each round then samples `fraction_fit` of the connected
sites (at least `min_sites`), sends the global weights, aggregates what comes back, and evaluates the
new weights on every site's validation rows. A site that fails or drops mid-round is left out of that
round; the job goes on while `min_sites` answered. When `min_sites` sites are not there within
`round_timeout_s`, or fewer answered, the job ends with that reason (`federation_error.json`). Every round
appends one record to `metrics.jsonl`; the end writes `federation_result.json` and `final_weights.relay`.
With `secure_aggregation` each round's training goes through Flower's SecAgg+ (`secure`); with
`differential_privacy` the strategy is wrapped in Flower's server-side fixed-clipping DP (`privacy`). With
the plan's `site_tokens` only the listed sites are admitted, each held to its name (`gallery_common.site_tokens`).
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ["FLWR_TELEMETRY_ENABLED"] = "0"  # before flwr is imported: it reads this once

import grpc
import numpy as np
from flwr.common import FitIns, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.proto.transport_pb2 import ClientMessage, ServerMessage
from flwr.proto.transport_pb2_grpc import add_FlowerServiceServicer_to_server
from flwr.server import Server
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.server import evaluate_clients, fit_clients
from flwr.server.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg, FedProx, Strategy
from flwr.server.superlink.fleet.grpc_bidi.flower_service_servicer import FlowerServiceServicer
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import SecAggPlusWorkflow
from flwr.supercore.grpc import GRPC_MAX_MESSAGE_LENGTH, generic_create_grpc_server

from gallery_common.site_tokens import admit_connection
from gallery_trainer.federated.plan import (
    ERROR_FILE,
    FINAL_WEIGHTS_FILE,
    INITIAL_WEIGHTS_FILE,
    METRICS_FILE,
    RESULT_FILE,
    FederationPlan,
)
from gallery_trainer.federated.privacy import gaussian_epsilon
from gallery_trainer.federated.relay import FederationError, pem_bytes, read_message, write_message
from gallery_trainer.federated.secure import node_id_of, secure_fit, set_identity

# the site a connection was admitted as, while Flower registers its proxy (in the same gRPC worker thread)
_JOINING = threading.local()


class SiteManager(SimpleClientManager):
    """Flower's client manager, but waiting for sites at most `join_timeout_s` (Flower's waits a day), and
    knowing which site each connection was admitted as (None when every site is admitted)."""

    def __init__(self, join_timeout_s: float) -> None:
        super().__init__()
        self.join_timeout_s = join_timeout_s
        self.admitted: dict[int, str | None] = {}  # node id -> the site its connection was admitted as

    def register(self, client: ClientProxy) -> bool:
        client.node_id = node_id_of(client)  # SecAgg+ addresses sites by node id, legacy proxies have none
        self.admitted[client.node_id] = getattr(_JOINING, "site", None)
        return bool(super().register(client))

    def admitted_as(self, proxy: ClientProxy) -> str | None:
        return self.admitted.get(proxy.node_id)

    def wait_for(self, num_clients: int, timeout: int = 86400) -> bool:
        if not super().wait_for(num_clients, timeout=math.ceil(self.join_timeout_s)):
            raise FederationError(
                f"{self.num_available()} of the {num_clients} sites needed (min_sites) were connected "
                f"within {self.join_timeout_s:g} s (round_timeout_s)"
            )
        return True


class SiteAdmission(FlowerServiceServicer):  # type: ignore[misc]
    """Flower's legacy Fleet service (the `grpc-bidi` transport), admitting only the sites the plan lists
    (`gallery_common.site_tokens`): a connection without a listed site's token and name is refused
    UNAUTHENTICATED with the reason, before Flower registers it. With `certified` (mutual TLS) a site is
    the one its certificate names (its common name), and a token must be that site's."""

    def __init__(self, manager: SiteManager, site_tokens: dict[str, str] | None, certified: bool = False) -> None:
        super().__init__(manager)
        self.site_tokens = site_tokens
        self.certified = certified

    def Join(self, request_iterator: Iterator[ClientMessage], context: grpc.ServicerContext) -> Iterator[ServerMessage]:
        certified = None
        if self.certified:  # the TLS handshake checked the certificate against the sites' CA
            names = context.auth_context().get("x509_common_name") or [b""]
            certified = names[0].decode(errors="replace")
        site, refusal = admit_connection(self.site_tokens, context.invocation_metadata(), certified)
        if refusal:
            print(f"refused a site from {context.peer()}: {refusal}", file=sys.stderr, flush=True)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal)
        _JOINING.site = site
        yield from super().Join(request_iterator, context)


# Flower's own server options (`flwr.supercore.grpc.generic_create_grpc_server`, flwr pinned), for the server
# this module builds when sites must present certificates: Flower's hard-codes require_client_auth=False
_WORKERS = 1000
_GRPC_OPTIONS = [
    ("grpc.max_concurrent_streams", _WORKERS),
    ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_LENGTH),
    ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_LENGTH),
    ("grpc.keepalive_time_ms", 210000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 0),
]


def _grpc_server(plan: FederationPlan, servicer: SiteAdmission) -> grpc.Server:
    """The coordinator's gRPC server: Flower's, or with `client_ca` one that asks every site for a certificate
    that CA issued (a site without one fails the TLS handshake and never joins)."""
    if plan.tls is None or "client_ca" not in plan.tls:
        return generic_create_grpc_server(
            servicer_and_add_fn=(servicer, add_FlowerServiceServicer_to_server),
            server_address=plan.address,
            certificates=_certificates(plan),
        )
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=_WORKERS),
        maximum_concurrent_rpcs=_WORKERS,
        options=_GRPC_OPTIONS,
    )
    add_FlowerServiceServicer_to_server(servicer, server)
    files = {role: pem_bytes(given) for role, given in plan.tls.items()}
    credentials = grpc.ssl_server_credentials(
        ((files["private_key"], files["certificate"]),), root_certificates=files["client_ca"], require_client_auth=True
    )
    try:
        server.add_secure_port(plan.address, credentials)
    except RuntimeError as exc:
        raise FederationError(f"engine.address: the coordinator cannot listen on {plan.address}: {exc}") from None
    return server


def _size(parameters: Parameters) -> int:
    return int(sum(len(tensor) for tensor in parameters.tensors))


def _config_size(config: dict[str, Any]) -> int:
    return len(json.dumps(config))


class Federation:
    """The rounds of one job over the sites connected to `manager`."""

    def __init__(self, plan: FederationPlan, manager: SiteManager) -> None:
        self.plan = plan
        self.manager = manager
        self.transform: dict[str, list[float]] = {}
        self.sites: dict[str, dict[str, Any]] = {}  # name -> fingerprint, examples, rounds
        self.private_rounds = 0  # rounds whose noisy aggregate was released (with differential privacy)
        self.strategy = self._strategy()
        self.secagg = (
            SecAggPlusWorkflow(
                plan.secagg_num_shares,
                plan.secagg_reconstruction_threshold,
                clipping_range=plan.secagg_clipping_range,
                timeout=plan.round_timeout_s,
            )
            if plan.secagg_num_shares is not None
            else None
        )

    def _strategy(self) -> Strategy:
        plan = self.plan
        common: dict[str, Any] = {
            "fraction_fit": plan.fraction_fit,
            "fraction_evaluate": 1.0,
            "min_fit_clients": plan.min_sites,
            "min_evaluate_clients": plan.min_sites,
            "min_available_clients": plan.min_sites,
            "on_fit_config_fn": self._fit_config,
            "on_evaluate_config_fn": self._evaluate_config,
            "accept_failures": True,
        }
        inner = FedProx(proximal_mu=plan.proximal_mu, **common) if plan.strategy == "fedprox" else FedAvg(**common)
        if not plan.dp_noise_multiplier:
            return inner
        # more answers than min_sites only lower each site's weight in the average, so calibrating the
        # noise to min_sites keeps every round at least as private as the accountant assumes
        return DifferentialPrivacyServerSideFixedClipping(
            inner, plan.dp_noise_multiplier, plan.dp_clipping_norm, num_sampled_clients=plan.min_sites
        )

    def _job_config(self, server_round: int) -> dict[str, Any]:
        return {"round": server_round, "job": self.plan.job, "transform": json.dumps(self.transform)}

    def _fit_config(self, server_round: int) -> dict[str, Any]:
        return {**self._job_config(server_round), "phase": "train", "local_epochs": self.plan.local_epochs}

    def _evaluate_config(self, server_round: int) -> dict[str, Any]:
        return self._job_config(server_round)

    def statistics(self) -> None:
        """Round 0: the standardisation from every connected site's sums, sums of squares and counts."""
        self.manager.wait_for(self.plan.min_sites)
        instructions = [
            (proxy, FitIns(Parameters(tensors=[], tensor_type="numpy.ndarray"), {"phase": "stats"}))
            for proxy in self.manager.all().values()
        ]
        results, _ = fit_clients(instructions, None, self.plan.round_timeout_s, 0)
        if len(results) < self.plan.min_sites:
            raise FederationError(
                f"round 0 (statistics): {len(results)} sites answered and min_sites is {self.plan.min_sites}"
            )
        n_features = self.plan.n_features
        sums, squares, count = np.zeros(n_features), np.zeros(n_features), 0
        for proxy, fit_res in results:
            site_sum, site_squares = parameters_to_ndarrays(fit_res.parameters)
            name = self._note_site(fit_res.metrics, fit_res.num_examples, None, self.manager.admitted_as(proxy))
            if site_sum.shape != (n_features,) or site_squares.shape != (n_features,):
                raise FederationError(f"site {name}: its data does not have {n_features} features")
            sums, squares, count = sums + site_sum, squares + site_squares, count + fit_res.num_examples
        mean = sums / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
        if not self.plan.standardize:
            mean, std = np.zeros(n_features), np.ones(n_features)
        # a constant feature would divide by zero; centred it is 0 everywhere, which is what it says
        scale = np.where(std > 1e-12, std, 1.0)
        self.transform = {"mean": mean.astype(np.float32).tolist(), "scale": scale.astype(np.float32).tolist()}

    def _note_site(self, metrics: dict[str, Any], examples: int, server_round: int | None, admitted: str | None) -> str:
        name = self._site_name(metrics, admitted)
        site = self.sites.setdefault(
            name, {"fingerprint": metrics.get("fingerprint"), "examples": examples, "rounds": 0}
        )
        if site["fingerprint"] != metrics.get("fingerprint", site["fingerprint"]):
            raise FederationError(f"two sites call themselves {name}, with different data")
        site["examples"] = examples
        if server_round is not None:
            site["rounds"] += 1
        return name

    @staticmethod
    def _site_name(metrics: dict[str, Any], admitted: str | None) -> str:
        """The name a site's answer gives; with listed sites, it must be the one its connection was admitted as."""
        name = str(metrics.get("site", "?"))
        if admitted is not None and name != admitted:
            raise FederationError(f"the connection admitted as site {admitted} answered as site {name}")
        return name

    def run_round(self, server_round: int, weights: Parameters) -> tuple[Parameters, dict[str, float]]:
        """One round: local training on the sampled sites, aggregation, evaluation on every site."""
        started = time.perf_counter()
        plan = self.plan
        traffic: dict[str, list[int]] = {}  # site -> [bytes down, bytes up]
        fit = self._secure_fit if self.secagg is not None else self._plain_fit
        aggregated, trained, failed = fit(server_round, weights, traffic)
        if len(trained) < plan.min_sites:
            raise FederationError(
                f"round {server_round}: {len(trained)} of {len(trained) + failed} sites returned weights ({failed} "
                f"failed, dropped or ran past round_timeout_s) and min_sites is {plan.min_sites}"
            )
        record: dict[str, float] = {}
        train_loss = train_examples = 0.0
        for name, examples, loss in trained:
            record[f"site.{name}.train_loss"] = loss
            if math.isfinite(loss):
                train_loss += loss * examples
                train_examples += examples
        evaluation, evaluations_failed = self._evaluate(server_round, aggregated, traffic)
        record |= evaluation
        for name, (down, up) in traffic.items():
            record[f"site.{name}.bytes"] = float(down + up)
        record |= {
            "round": float(server_round),
            "sites": float(len(trained)),
            "sites_failed": float(failed + evaluations_failed),
            "train_loss": train_loss / train_examples if train_examples else math.nan,
            "bytes_down": float(sum(down for down, _ in traffic.values())),
            "bytes_up": float(sum(up for _, up in traffic.values())),
            "bytes_per_site": float(np.mean([down + up for down, up in traffic.values()])),
            "round_seconds": time.perf_counter() - started,
        }
        if plan.dp_noise_multiplier:
            record["dp_epsilon"] = self.epsilon()
        return aggregated, record

    def _plain_fit(
        self, server_round: int, weights: Parameters, traffic: dict[str, list[int]]
    ) -> tuple[Parameters, list[tuple[str, int, float]], int]:
        """Train on the sampled sites and aggregate their weights: the new weights, (site, examples, train
        loss) of each site that answered, and how many did not."""
        plan = self.plan
        instructions = self.strategy.configure_fit(server_round, weights, self.manager)
        results, failures = fit_clients(instructions, None, plan.round_timeout_s, server_round)
        sent = _size(weights) + _config_size(self._fit_config(server_round))
        trained = []
        for proxy, fit_res in results:
            name = self._note_site(fit_res.metrics, fit_res.num_examples, server_round, self.manager.admitted_as(proxy))
            traffic[name] = [sent, _size(fit_res.parameters)]
            trained.append((name, fit_res.num_examples, float(fit_res.metrics.get("train_loss", math.nan))))
            if plan.dp_noise_multiplier:
                fit_res.num_examples = 1  # equal weights: the noise is calibrated to one site's clipped update
        if len(results) < plan.min_sites:
            return weights, trained, len(failures)
        aggregated, _ = self.strategy.aggregate_fit(server_round, results, failures)
        if aggregated is None:  # the DP wrapper releases nothing from a round in which a site failed
            return weights, trained, len(failures)
        if plan.dp_noise_multiplier:
            self.private_rounds += 1
        return aggregated, trained, len(failures)

    def _secure_fit(
        self, server_round: int, weights: Parameters, traffic: dict[str, list[int]]
    ) -> tuple[Parameters, list[tuple[str, int, float]], int]:
        """`_plain_fit` through SecAgg+: the coordinator sees masked weights and only their sum unmasked."""
        assert self.secagg is not None
        self.secagg.max_weight = float(sum(site["examples"] for site in self.sites.values())) + 1.0
        aggregated, grid = secure_fit(
            self.secagg, self.strategy, self.manager, weights, server_round, self.plan.round_timeout_s
        )
        if aggregated.tensors == weights.tensors:  # the protocol halted: too few sites took part to unmask
            return weights, [], len(grid.asked)
        trained = []
        for node_id, fit_res in grid.fit_results.items():
            admitted = self.manager.admitted.get(node_id)
            name = self._note_site(fit_res.metrics, fit_res.num_examples, server_round, admitted)
            traffic[name] = grid.traffic[node_id]
            trained.append((name, fit_res.num_examples, float(fit_res.metrics.get("train_loss", math.nan))))
        return aggregated, trained, len(grid.asked) - len(trained)

    def _evaluate(
        self, server_round: int, weights: Parameters, traffic: dict[str, list[int]]
    ) -> tuple[dict[str, float], int]:
        """Every site's loss and accuracy of `weights` on its validation rows, their weighted means and the
        worst site; and how many sites failed to answer."""
        evaluations = self.strategy.configure_evaluate(server_round, weights, self.manager)
        evaluated, failures = evaluate_clients(evaluations, None, self.plan.round_timeout_s, server_round)
        sent = _size(weights) + _config_size(self._evaluate_config(server_round))
        record: dict[str, float] = {}
        loss = correct = examples = 0.0
        worst = math.inf
        for proxy, eval_res in evaluated:
            name = self._site_name(eval_res.metrics, self.manager.admitted_as(proxy))
            traffic.setdefault(name, [0, 0])[0] += sent
            accuracy = float(eval_res.metrics.get("accuracy", math.nan))
            record[f"site.{name}.val_loss"] = float(eval_res.loss)
            record[f"site.{name}.val_accuracy"] = accuracy
            loss += float(eval_res.loss) * eval_res.num_examples
            correct += accuracy * eval_res.num_examples
            examples += eval_res.num_examples
            worst = min(worst, accuracy)
        if examples:
            record |= {
                "val_loss": loss / examples,
                "val_accuracy": correct / examples,
                "worst_site_val_accuracy": worst,
            }
        return record, len(failures)

    def epsilon(self) -> float:
        """The privacy budget spent so far (see `privacy`)."""
        assert self.plan.dp_noise_multiplier is not None
        return gaussian_epsilon(self.plan.dp_noise_multiplier, self.private_rounds, self.plan.dp_delta)

    def privacy(self) -> dict[str, Any] | None:
        """The mechanism and the (epsilon, delta) of the whole run, for the model's lineage."""
        plan = self.plan
        if not plan.dp_noise_multiplier:
            return None
        return {
            "mechanism": "Gaussian, site-level, server-side fixed clipping (Flower), RDP accounting",
            "noise_multiplier": plan.dp_noise_multiplier,
            "clipping_norm": plan.dp_clipping_norm,
            "epsilon": self.epsilon(),
            "delta": plan.dp_delta,
        }


def _write_metrics(workdir: Path, server_round: int, record: dict[str, float]) -> None:
    line = {"kind": "epoch", "step": server_round, "epoch": server_round, "time": time.time(), **record}
    clean = {k: v for k, v in line.items() if not isinstance(v, float) or math.isfinite(v)}
    with open(workdir / METRICS_FILE, "a", encoding="utf-8") as out:
        out.write(json.dumps(clean) + "\n")


def _certificates(plan: FederationPlan) -> tuple[bytes, bytes, bytes] | None:
    """Flower's (root certificate, certificate, private key) when the plan asks for TLS."""
    if plan.tls is None:
        return None
    return tuple(Path(plan.tls[role]).read_bytes() for role in ("root_certificate", "certificate", "private_key"))  # type: ignore[return-value]


def run_federation(workdir: Path) -> None:
    """Run the plan in `workdir` to the end; FederationError says why it could not."""
    plan = FederationPlan.load(workdir)
    set_identity(node_id=0)
    random.seed(plan.seed)  # Flower samples sites with the module's random
    with open(workdir / INITIAL_WEIGHTS_FILE, "rb") as initial:
        _, arrays = read_message(initial)
    weights = ndarrays_to_parameters(arrays)
    manager = SiteManager(plan.round_timeout_s)
    try:
        certified = plan.tls is not None and "client_ca" in plan.tls
        grpc_server = _grpc_server(plan, SiteAdmission(manager, plan.site_tokens, certified))
        grpc_server.start()
    except SystemExit as exc:  # Flower exits when it cannot bind
        raise FederationError(f"engine.address: the coordinator cannot listen on {plan.address}: {exc}") from None
    server = Server(client_manager=manager)
    federation = Federation(plan, manager)
    records = []
    try:
        server_round = 0
        federation.statistics()
        for server_round in range(1, plan.rounds + 1):
            weights, record = federation.run_round(server_round, weights)
            _write_metrics(workdir, server_round, record)
            records.append(record)
    except FederationError as exc:
        reason = str(exc)
        raise FederationError(reason if reason.startswith("round ") else f"round {server_round}: {reason}") from None
    finally:
        server.disconnect_all_clients(timeout=5)
        grpc_server.stop(grace=1)
    with open(workdir / FINAL_WEIGHTS_FILE, "wb") as final:
        write_message(final, {}, parameters_to_ndarrays(weights))
    result = {
        "sites": [{"name": name, **site} for name, site in sorted(federation.sites.items())],
        "rounds_run": len(records),
        "transform": federation.transform,
        "final": {k: v for k, v in records[-1].items() if math.isfinite(v)},
        "round_seconds": float(np.mean([r["round_seconds"] for r in records])),
        "bytes_per_site_per_round": float(np.mean([r["bytes_per_site"] for r in records])),
        "privacy": federation.privacy(),
    }
    (workdir / RESULT_FILE).write_text(json.dumps(result, indent=2, allow_nan=False, default=str))


def main(argv: list[str] | None = None) -> None:
    workdir = Path((argv or sys.argv[1:])[0])
    # the trainer stops a cancelled job with SIGTERM: leave through `finally`, so the sites are told
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run_federation(workdir)
    except FederationError as exc:
        (workdir / ERROR_FILE).write_text(json.dumps({"error": str(exc)}))
        sys.exit(1)
    except Exception as exc:  # the job still ends with a reason; the traceback goes to train.log
        (workdir / ERROR_FILE).write_text(json.dumps({"error": f"the coordinator failed: {type(exc).__name__}: {exc}"}))
        raise


if __name__ == "__main__":
    main()
