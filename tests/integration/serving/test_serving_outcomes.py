"""Request ids and feedback, end to end: two model-server processes (versions 1 and 2 of `tiny`, answering
differently) behind a gateway process on a real nats-server with its NATS users, as `gallery up` runs them.

Every answer names its request (REST header and JSON `id`, gRPC `id`); feedback on an answer of a route
that records outcomes is joined to the version that gave it and published as `model.outcome`; the
errors a client can make get 404, 422 and 409 with their reasons; the records outlive a gateway restart
and expire after GALLERY_OUTCOME_TTL_S.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnx
import pytest
import test_serving_routes_bucket as routes_bucket
from onnx import numpy_helper
from test_serving_modelserver import Server, W, metric_total, put_artifact, start_server, tiny_model, wait_ready
from test_serving_routes_bucket import deployer_routes

from gallery_common.bus import EventBus
from gallery_common.events import ModelOutcome
from gallery_common.netutil import free_port
from gallery_common.oip_grpc import grpc_predict_v2_pb2 as pb
from gallery_common.oip_grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from gallery_deployer.gateway.routes import Backend, ModelRoute, RoutePolicy

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from lifecycle_stack import LifecycleStack, ServiceProcess
from waiting import eventually

pytestmark = pytest.mark.story  # the restart and the expiry come last, in this order
# the stack of processes on the module's nats-server with the stack's NATS users (`secured_nats`)
stack = routes_bucket.stack

MODEL = "tiny"
GENERATED = re.compile(r"[0-9a-f]{32}")
ROWS = 2
REQUESTS = 40


def version_2_model() -> bytes:
    """`tiny` with its weight columns reversed: it mostly names the class version 1 names least."""
    model = onnx.load_from_string(tiny_model())
    weights = next(init for init in model.graph.initializer if init.name == "W")
    weights.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(W[:, ::-1]), "W"))
    return model.SerializeToString()


@pytest.fixture(scope="module")
def servers(secured_home: Path) -> Iterator[dict[str, Server]]:
    """Versions 1 and 2 of `tiny`, each its own model-server process."""
    started = {
        "1": start_server(put_artifact(secured_home, "tiny/1/model.onnx", tiny_model()), "--version", "1", "--no-nats"),
        "2": start_server(
            put_artifact(secured_home, "tiny/2/model.onnx", version_2_model()), "--version", "2", "--no-nats"
        ),
    }
    try:
        for server in started.values():
            wait_ready(server)
        yield started
    finally:
        for server in started.values():
            server.stop()


class Gateway:
    """The gateway process of the test, restarted by the last tests."""

    def __init__(self, stack: LifecycleStack) -> None:
        self.stack = stack
        self.grpc_port = free_port()
        self.starts = 0
        self.process: ServiceProcess = self.start()

    def start(self, **settings: str) -> ServiceProcess:
        self.starts += 1
        self.process = self.stack.start(
            "gateway",
            replica=f"-{self.starts}",
            GALLERY_SAMPLE_RATE="0",
            GALLERY_GRPC_PORT=str(self.grpc_port),
            GALLERY_ROUTES_FILE=str(self.stack.home / "gateway-routes.json"),
            **settings,
        )
        return self.process

    def restart(self, **settings: str) -> None:
        self.process.process.terminate()  # SIGTERM: the answers still queued are stored first
        self.process.process.wait(20)  # uvicorn ends by raising the signal again, after its shutdown
        self.start(**settings)

    @property
    def url(self) -> str:
        return self.process.url


@pytest.fixture(scope="module")
def gateway(stack: LifecycleStack) -> Gateway:
    return Gateway(stack)


def tiny_route(servers: dict[str, Server], *, record: bool) -> ModelRoute:
    backends = [
        Backend(id=f"v{v}", url=s.url, version=v, variant=f"variant-{v}", weight=50) for v, s in servers.items()
    ]
    return ModelRoute(backends=backends, policy=RoutePolicy(sticky_header=None, record_outcomes=record))


async def set_route(stack: LifecycleStack, gateway: Gateway, route: ModelRoute) -> None:
    """Write `tiny`'s route into the routes bucket as the deployer does; wait until the gateway serves it
    and is connected to NATS (feedback needs the bus)."""
    bus, routes = await deployer_routes(stack.nats_url, stack.home)
    try:
        await routes.put(MODEL, route)
    finally:
        await bus.close()
    async with httpx.AsyncClient(timeout=5) as client:

        async def applied() -> bool:
            served = await client.get(f"{gateway.url}/admin/routes/{MODEL}")
            ready = await client.get(f"{gateway.url}/readyz")
            connected = ready.json().get("checks", {}).get("nats") == "ok"
            return served.status_code == 200 and ModelRoute.model_validate(served.json()) == route and connected

        await eventually(applied, 30, "the gateway to serve the route and reach NATS")


@pytest.fixture(scope="module")
def recording(stack: LifecycleStack, gateway: Gateway, servers: dict[str, Server]) -> ModelRoute:
    """`tiny` split 50/50 between its versions, recording outcomes; the lifecycle stream made (the services
    of a stack make it; here the CLI's user does)."""
    route = tiny_route(servers, record=True)

    async def prepare() -> None:
        await (await stack.bus("cli").connect()).close()
        await set_route(stack, gateway, route)

    asyncio.run(prepare())
    return route


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as opened:
        yield opened


@pytest.fixture
async def events(stack: LifecycleStack) -> AsyncIterator[EventBus]:
    """A reader of the lifecycle stream (the CLI's NATS user), which it creates when missing."""
    bus = await stack.bus("cli").connect()
    yield bus
    await bus.close()


def features(seed: int, rows: int = ROWS) -> list[float]:
    return [float(v) for v in np.random.default_rng(seed).standard_normal((rows, 4)).ravel()]


def infer_body(seed: int, rows: int = ROWS, **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [rows, 4], "data": features(seed, rows)}]
    } | extra


async def infer(client: httpx.AsyncClient, url: str, seed: int, **headers: str) -> httpx.Response:
    answer = await client.post(f"{url}/v2/models/{MODEL}/infer", json=infer_body(seed), headers=headers)
    assert answer.status_code == 200, answer.text
    return answer


def answered_classes(answer: httpx.Response) -> list[int]:
    logits = next(o for o in answer.json()["outputs"] if o["name"] == "logits")
    return [int(c) for c in np.asarray(logits["data"]).reshape(logits["shape"]).argmax(axis=1)]


async def feedback(client: httpx.AsyncClient, gateway: Gateway, body: Any, model: str = MODEL) -> httpx.Response:
    return await client.post(f"{gateway.url}/v2/models/{model}/feedback", json=body)


async def stored_outcomes(bus: EventBus, ids: set[str]) -> dict[str, ModelOutcome]:
    """The `model.outcome` events of these request ids, once all of them are in the stream."""

    async def all_there() -> dict[str, ModelOutcome] | None:
        found = {
            event.data.request_id: event.data
            for event in await bus.stored_events()
            if isinstance(event.data, ModelOutcome) and event.data.request_id in ids
        }
        return found if set(found) == ids else None

    return dict(await eventually(all_there, 30, f"{len(ids)} model.outcome events"))


async def test_every_answer_names_its_request(
    recording: ModelRoute, gateway: Gateway, servers: dict[str, Server], client: httpx.AsyncClient
) -> None:
    for url in (gateway.url, servers["1"].url):  # through the gateway, and from a model server alone
        made = await infer(client, url, 1)
        assert GENERATED.fullmatch(made.headers["x-gallery-request-id"])
        assert made.json()["id"] == made.headers["x-gallery-request-id"]

        given = await infer(client, url, 1, **{"x-gallery-request-id": "order-17_a"})
        assert given.headers["x-gallery-request-id"] == "order-17_a" and given.json()["id"] == "order-17_a"

        # the client's own OIP id stays the answer's id; the header names the request all the same
        own = await client.post(f"{url}/v2/models/{MODEL}/infer", json=infer_body(1, id="their id"))
        assert own.json()["id"] == "their id" and GENERATED.fullmatch(own.headers["x-gallery-request-id"])

        for bad in ("has space", "x" * 129, "-leading-dash"):
            refused = await client.post(
                f"{url}/v2/models/{MODEL}/infer", json=infer_body(1), headers={"x-gallery-request-id": bad}
            )
            assert refused.status_code == 400
            assert "x-gallery-request-id" in refused.json()["error"] and "letters, digits" in refused.json()["error"]


def grpc_infer(port: int, message_id: str = "", metadata: tuple[tuple[str, str], ...] = ()) -> tuple[Any, dict]:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="features", datatype="FP32", shape=[ROWS, 4], contents=pb.InferTensorContents(fp32_contents=features(3))
    )
    request = pb.ModelInferRequest(model_name=MODEL, id=message_id, inputs=[tensor])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer, call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer.with_call(
            request, metadata=metadata, timeout=10
        )
    return answer, dict(call.trailing_metadata() or ())


async def test_grpc_answers_name_their_request_and_take_feedback(
    recording: ModelRoute, gateway: Gateway, client: httpx.AsyncClient
) -> None:
    made, trailing = grpc_infer(gateway.grpc_port)
    assert GENERATED.fullmatch(made.id) and trailing["x-gallery-request-id"] == made.id
    assert grpc_infer(gateway.grpc_port, "grpc-own-7")[0].id == "grpc-own-7"
    given, trailing = grpc_infer(gateway.grpc_port, metadata=(("x-gallery-request-id", "grpc-meta-7"),))
    assert given.id == "grpc-meta-7" and trailing["x-gallery-request-id"] == "grpc-meta-7"
    with pytest.raises(grpc.RpcError) as refused:
        grpc_infer(gateway.grpc_port, metadata=(("x-gallery-request-id", "no good"),))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    joined = await feedback(client, gateway, {"request_id": made.id, "reward": 0.5})
    assert joined.status_code == 202, joined.text
    [outcome] = joined.json()["recorded"]
    assert outcome["version"] == made.model_version and outcome["rows"] == ROWS and outcome["reward"] == 0.5


async def test_feedback_is_joined_to_the_version_that_answered(
    recording: ModelRoute, gateway: Gateway, client: httpx.AsyncClient, events: EventBus
) -> None:
    labels = np.random.default_rng(7).integers(0, 3, (REQUESTS, ROWS)).tolist()
    answers = [await infer(client, gateway.url, 100 + i) for i in range(REQUESTS)]
    ids = [a.headers["x-gallery-request-id"] for a in answers]
    expected: dict[str, list[int]] = {"1": [0, 0], "2": [0, 0]}  # version: [correct rows, rows]
    for answer, label in zip(answers, labels, strict=True):
        tally = expected[answer.json()["model_version"]]
        tally[0] += sum(int(a == t) for a, t in zip(answered_classes(answer), label, strict=True))
        tally[1] += ROWS
    assert expected["1"][1] and expected["2"][1], "the 50/50 split sent every request to one version"

    half = REQUESTS // 2
    for request_id, label in zip(ids[:half], labels[:half], strict=True):  # one at a time
        one = await feedback(client, gateway, {"request_id": request_id, "label": label})
        assert one.status_code == 202, one.text
    batch = [{"request_id": r, "label": label} for r, label in zip(ids[half:], labels[half:], strict=True)]
    many = await feedback(client, gateway, {"outcomes": batch})
    assert many.status_code == 202, many.text
    assert len(many.json()["recorded"]) == REQUESTS - half

    outcomes = await stored_outcomes(events, set(ids))
    found: dict[str, list[int]] = {"1": [0, 0], "2": [0, 0]}
    for answer, request_id in zip(answers, ids, strict=True):
        outcome = outcomes[request_id]
        assert outcome.version == answer.json()["model_version"] and outcome.kind == "label"
        assert outcome.variant == f"variant-{outcome.version}", "the variant the route named for the backend"
        assert outcome.correct == [a == t for a, t in zip(answered_classes(answer), outcome.label or [], strict=True)]
        found[outcome.version][0] += outcome.correct_rows or 0
        found[outcome.version][1] += outcome.rows
    assert found == expected

    page = (await client.get(f"{gateway.url}/metrics")).text
    for version, (correct, rows) in expected.items():  # per version and variant, for Grafana's panels
        series = f'{{model="{MODEL}",variant="variant-{version}",version="{version}"}}'
        assert metric_total(page, f"modelgallery_outcome_correct_rows_total{series}") == correct
        assert metric_total(page, f"modelgallery_outcome_rows_total{series}") == rows


async def test_feedback_a_gateway_cannot_join_is_refused_with_its_reason(
    recording: ModelRoute, gateway: Gateway, client: httpx.AsyncClient
) -> None:
    request_id = (await infer(client, gateway.url, 5)).headers["x-gallery-request-id"]

    unknown = await feedback(client, gateway, {"request_id": "never-answered", "label": [0, 1]})
    assert unknown.status_code == 404 and "never-answered" in unknown.json()["error"]
    assert "unknown or expired" in unknown.json()["error"]
    elsewhere = await feedback(client, gateway, {"request_id": request_id, "label": [0, 1]}, model="other")
    assert elsewhere.status_code == 404 and "not answers of model 'other'" in elsewhere.json()["error"]
    mixed = {"outcomes": [{"request_id": request_id, "reward": 1.0}, {"request_id": "gone-1", "reward": 1.0}]}
    partly = await feedback(client, gateway, mixed)
    assert partly.status_code == 404 and "gone-1" in partly.json()["error"]
    assert request_id not in partly.json()["error"]

    for body, reason in [
        ({"request_id": request_id, "label": 1, "reward": 1.0}, "one of a label, a value or a reward"),
        ({"request_id": request_id}, "one of a label, a value or a reward"),
        ({"request_id": request_id, "label": "cat"}, "label"),
        ({"request_id": request_id, "reward": "high"}, "reward"),
        ({"request_id": request_id, "label": [0, 1, 2]}, "3 label(s) for an answer of 2 row(s)"),
        ({"outcomes": [{"request_id": request_id, "label": [0, 1]}] * 2}, "more than once"),
        ({"outcomes": [{"request_id": request_id, "label": [0, 1]}] * 1001}, "at most 1000"),
    ]:
        malformed = await feedback(client, gateway, body)
        assert malformed.status_code == 422, (body, malformed.text)
        assert reason in malformed.json()["error"], malformed.text

    # nothing above was recorded: the answer takes its feedback once, then no more
    first = await feedback(client, gateway, {"request_id": request_id, "label": [0, 1]})
    assert first.status_code == 202, first.text
    again = await feedback(client, gateway, {"request_id": request_id, "reward": 1.0})
    assert again.status_code == 409 and request_id in again.json()["error"]


async def test_a_route_that_does_not_record_outcomes_keeps_nothing(
    recording: ModelRoute,
    stack: LifecycleStack,
    gateway: Gateway,
    servers: dict[str, Server],
    client: httpx.AsyncClient,
) -> None:
    await set_route(stack, gateway, tiny_route(servers, record=False))
    try:
        before = metric_total((await client.get(f"{gateway.url}/metrics")).text, "modelgallery_gateway_outcome")
        request_id = (await infer(client, gateway.url, 9)).headers["x-gallery-request-id"]
        refused = await feedback(client, gateway, {"request_id": request_id, "label": [0, 1]})
        assert refused.status_code == 404, refused.text
        after = metric_total((await client.get(f"{gateway.url}/metrics")).text, "modelgallery_gateway_outcome")
        assert after == before
    finally:
        await set_route(stack, gateway, recording)


async def test_a_regressors_answers_take_true_values_and_give_its_online_error(
    recording: ModelRoute,
    stack: LifecycleStack,
    gateway: Gateway,
    servers: dict[str, Server],
    client: httpx.AsyncClient,
    events: EventBus,
) -> None:
    """The same servers on a route the deployer marks as a regressor's (`task`): an answer keeps its outputs as
    predictions, a true value per row joins them (squared error per row, averaged over its three outputs), and
    a class label is refused with the reason."""
    await set_route(stack, gateway, tiny_route(servers, record=True).model_copy(update={"task": "regression"}))
    try:
        answer = await infer(client, gateway.url, 21)
        request_id, version = answer.headers["x-gallery-request-id"], answer.json()["model_version"]
        logits = next(o for o in answer.json()["outputs"] if o["name"] == "logits")
        predicted = np.asarray(logits["data"], dtype=np.float64).reshape(logits["shape"])
        truth = (predicted + np.array([[1.0, 0.0, -1.0], [2.0, 2.0, 2.0]])).tolist()
        before = metric_total(
            (await client.get(f"{gateway.url}/metrics")).text,
            f'modelgallery_outcome_value_rows_total{{model="{MODEL}",variant="variant-{version}",version="{version}"}}',
        )
        labelled = await feedback(client, gateway, {"request_id": request_id, "label": [0, 1]})
        assert labelled.status_code == 422 and "a regressor's predictions" in labelled.json()["error"]
        joined = await feedback(client, gateway, {"request_id": request_id, "value": truth})
        assert joined.status_code == 202, joined.text
        outcome = (await stored_outcomes(events, {request_id}))[request_id]
        assert outcome.kind == "value" and outcome.version == version
        assert outcome.squared_error == pytest.approx([2 / 3, 4.0], rel=1e-5)
        page = (await client.get(f"{gateway.url}/metrics")).text
        series = f'{{model="{MODEL}",variant="variant-{version}",version="{version}"}}'
        assert metric_total(page, f"modelgallery_outcome_value_rows_total{series}") == before + ROWS
    finally:
        await set_route(stack, gateway, recording)


async def test_records_outlive_a_gateway_restart(
    recording: ModelRoute, stack: LifecycleStack, gateway: Gateway, client: httpx.AsyncClient
) -> None:
    request_id = (await infer(client, gateway.url, 11)).headers["x-gallery-request-id"]
    gateway.restart()
    await set_route(stack, gateway, recording)  # already served from the snapshot; waits for NATS
    joined = await feedback(client, gateway, {"request_id": request_id, "reward": -1.0})
    assert joined.status_code == 202, joined.text
    assert joined.json()["recorded"][0]["reward"] == -1.0


async def test_an_answer_older_than_the_ttl_is_gone(
    recording: ModelRoute, stack: LifecycleStack, gateway: Gateway, client: httpx.AsyncClient
) -> None:
    gateway.restart(GALLERY_OUTCOME_TTL_S="1")
    await set_route(stack, gateway, recording)
    request_id = (await infer(client, gateway.url, 13)).headers["x-gallery-request-id"]
    probe = {"request_id": request_id, "label": [0]}  # one label for two rows: 422 while the answer is kept

    async def answer_of_probe() -> int:
        return (await feedback(client, gateway, probe)).status_code

    await eventually(lambda: _is(answer_of_probe, 422), 10, "the answer to be recorded")
    await eventually(lambda: _is(answer_of_probe, 404), 30, "the answer to expire")
    expired = await feedback(client, gateway, {"request_id": request_id, "reward": 1.0})
    assert expired.status_code == 404 and "unknown or expired (answers are kept 1 s" in expired.json()["error"]


async def _is(status: Any, expected: int) -> bool:
    return bool(await status() == expected)
