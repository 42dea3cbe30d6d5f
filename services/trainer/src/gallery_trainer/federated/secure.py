"""Secure aggregation with Flower's SecAgg+ over the legacy gRPC transport the federation runs on.

Flower implements SecAgg+ for its Message API: `SecAggPlusWorkflow` on the server sends each stage
(setup, share keys, collect masked vectors, unmask) as Messages through a Grid, and `secaggplus_mod`
on each client answers them, masking the site's weights so that the coordinator can only recover
their weighted sum. The legacy Fleet API carries FitIns and FitRes, not Messages, so `RelayGrid`
(the part of Flower's Grid the workflow uses) sends each Message serialised with Flower's own protobuf
in a FitIns config, and `flower_client` runs `secaggplus_mod` on it and returns the reply the same way.
The protocol, its cryptography and the unmasking are Flower's, unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import flwr.compat.common.recorddict_compat as compat
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.common import FitIns, FitRes, Parameters
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import SecAggPlusWorkflow
from flwr.supercore.task_identity import TaskIdentity

MESSAGE_PHASE = "message"
"""The FitIns `phase` of a tunnelled Message; its bytes are in the config's `message`."""
RELAY_ERROR = 0


def set_identity(node_id: int) -> None:
    """Flower's Messages take the run and node from the process's task identity: one run here."""
    TaskIdentity.run_id = 0
    TaskIdentity.node_id = node_id
    TaskIdentity.task_id = 0


def node_id_of(proxy: ClientProxy) -> int:
    """A node id for a legacy client proxy (which has only a hex `cid`): the first 60 bits of it."""
    return int(proxy.cid[:15], 16)


def encode(message: Message) -> bytes:
    return bytes(message_to_proto(message).SerializeToString())


def decode(data: bytes) -> Message:
    return message_from_proto(ProtoMessage.FromString(data))


class RelayGrid:
    """`send_and_receive` and `get_node_ids` of Flower's Grid over the legacy client proxies; it counts the
    bytes each site exchanged and keeps the sites' training results (their metrics ride along)."""

    def __init__(self, proxies: Iterable[ClientProxy], timeout: float, server_round: int) -> None:
        self.proxies = {node_id_of(proxy): proxy for proxy in proxies}
        self.timeout = timeout
        self.server_round = server_round
        self.traffic: dict[int, list[int]] = {}  # node id -> [bytes down, bytes up]
        self.fit_results: dict[int, FitRes] = {}
        self.asked: set[int] = set()

    def get_node_ids(self) -> Iterable[int]:
        return list(self.proxies)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        with ThreadPoolExecutor() as pool:
            return list(pool.map(self._exchange, messages))

    def _exchange(self, message: Message) -> Message:
        node_id = message.metadata.dst_node_id
        self.asked.add(node_id)
        proxy = self.proxies.get(node_id)
        if proxy is None:
            return Message(Error(RELAY_ERROR, f"node {node_id} is not connected"), reply_to=message)
        sent = encode(message)
        ins = FitIns(Parameters(tensors=[], tensor_type="numpy.ndarray"), {"phase": MESSAGE_PHASE, "message": sent})
        try:
            res = proxy.fit(ins, self.timeout, self.server_round)
            received = res.metrics["message"]
            reply = decode(received if isinstance(received, bytes) else bytes(str(received), "utf-8"))
        except Exception as exc:  # a site that drops or fails is one the protocol copes without
            return Message(Error(RELAY_ERROR, f"{type(exc).__name__}: {exc}"), reply_to=message)
        traffic = self.traffic.setdefault(node_id, [0, 0])
        traffic[0] += len(sent)
        traffic[1] += len(received)
        if reply.has_content() and "fitres.metrics" in reply.content.config_records:
            self.fit_results[node_id] = compat.recorddict_to_fitres(reply.content, keep_input=True)
        return reply


def secure_fit(
    workflow: SecAggPlusWorkflow,
    strategy: Strategy,
    manager: Any,
    weights: Parameters,
    server_round: int,
    timeout: float,
) -> tuple[Parameters, RelayGrid]:
    """One round's training through SecAgg+: the new global weights (unchanged if the protocol could not
    finish) and the grid, with what each site sent and its training metrics."""
    context = LegacyContext(
        Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        strategy=strategy,
        client_manager=manager,
    )
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(weights, keep_input=True)
    grid = RelayGrid(manager.all().values(), timeout, server_round)
    workflow(grid, context)  # type: ignore[arg-type]  # it uses only what RelayGrid offers
    aggregated = compat.arrayrecord_to_parameters(context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
    return aggregated, grid
