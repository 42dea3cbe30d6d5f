"""Online experiments on the real deployer, registry and gateway, with outcomes fed on the bus.

Two versions serve (production and canary) from real model servers; the test plays a population
giving feedback by publishing `model.outcome` events as the gateway would. A challenger truly better
by 3 points of accuracy wins within the planned sample size: it takes all the traffic and the
`production` alias with the evidence, and `model.experiment_concluded` says so. Equal arms end with no
winner and move nothing. With the bandit policy the better arm's share of the route passes 80 %.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import nats
import numpy as np
import orjson
import pytest
from deployer_stack import publish, register, validated
from headless_chromium import headless_chromium
from lifecycle_stack import LifecycleStack
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from typer.testing import CliRunner
from waiting import eventually, wait_for

from gallery_cli.main import app as cli
from gallery_common.bus import DeadLetter, EventBus
from gallery_common.events import ModelOutcome, make_event
from gallery_common.nats_server import EmbeddedNats

pytestmark = pytest.mark.story

RNG = np.random.default_rng(21)
ROWS = RNG.normal(size=(32, 4)).astype(np.float32)
W = RNG.normal(size=(4, 3))
ROWS_PER_OUTCOME = 100  # a batch answer of 100 rows: one outcome event with a correct flag per row


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, nats_module: EmbeddedNats) -> Iterator[LifecycleStack]:
    """Registry, gateway, deployer and the Gallery; versions 1 (production) and 2 (a canary the analysis leaves
    alone)."""
    running = LifecycleStack(home=tmp_path_factory.mktemp("home"), nats_url=nats_module.url)
    try:
        running.start_together(
            ("registry", "", {}),
            ("gateway", "", {"GALLERY_SAMPLE_RATE": "0"}),
            timeout=60,
        )
        deployer = {"GALLERY_CANARY_WINDOW_S": "3600", "GALLERY_DRAIN_S": "1", "GALLERY_READY_TIMEOUT_S": "60"}
        # the Gallery is launched last: it reads the others' URLs
        running.start_together(("deployer", "", deployer), ("gallery", "", {}), timeout=60)
        registry = running.services["registry"].url
        for version in (1, 2):
            artifacts = register(registry, running.home, version, W, rows=ROWS)
            asyncio.run(publish(nats_module.url, validated(version, artifacts), f"validated-iris-{version}"))
            wait_for(f"v{version} serving", lambda v=version: v in serving(running), timeout=60)
        yield running
    finally:
        running.stop()


def serving(stack: LifecycleStack) -> dict[int, str]:
    found = httpx.get(f"{stack.services['deployer'].url}/api/v1/deployments").json()
    return {d["version"]: d["stage"] for d in found}


def route_shares(stack: LifecycleStack) -> tuple[dict[str, float], bool]:
    """Each version's share of the model's route in the routes bucket, and whether it records outcomes."""
    found = httpx.get(f"{stack.services['deployer'].url}/api/v1/routes/iris").json()["route"]
    total = sum(b["weight"] for b in found["backends"])
    shares: dict[str, float] = {}
    for backend in found["backends"]:
        shares[backend["version"]] = shares.get(backend["version"], 0.0) + backend["weight"] / total
    return shares, found["policy"]["record_outcomes"]


def start(stack: LifecycleStack, **body: Any) -> httpx.Response:
    return httpx.post(f"{stack.services['deployer'].url}/api/v1/experiments", json={"model": "iris", **body})


def experiment(stack: LifecycleStack, ident: str) -> dict[str, Any]:
    return httpx.get(f"{stack.services['deployer'].url}/api/v1/experiments/{ident}").json()  # type: ignore[no-any-return]


def gallery(stack: LifecycleStack, *args: str) -> str:
    """`gallery ...` against the stack's deployer; its output (it must succeed)."""
    result = CliRunner().invoke(
        cli, list(args), env={"GALLERY_DEPLOYER_URL": stack.services["deployer"].url, "COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    return result.output


class Population:
    """Clients giving feedback: each outcome event is one answer of ROWS_PER_OUTCOME rows from `version`,
    each row correct with the version's true accuracy."""

    def __init__(self, nats_url: str, accuracy: dict[int, float], seed: int) -> None:
        self.nats_url, self.accuracy = nats_url, accuracy
        self.rng = np.random.default_rng(seed)
        self.sent = 0

    async def feed(self, answers_per_version: int) -> None:
        async with EventBus(self.nats_url, "/tests/population") as bus:
            for _ in range(answers_per_version):
                for version, rate in self.accuracy.items():
                    correct = [bool(c) for c in self.rng.random(ROWS_PER_OUTCOME) < rate]
                    outcome = self.outcome(version, correct)
                    await bus.publish(outcome, event_id=f"outcome.{outcome.request_id}")

    def outcome(self, version: int, correct: list[bool]) -> ModelOutcome:
        """One answer's feedback: a label per row, `correct` saying which rows the version got right."""
        self.sent += 1
        return ModelOutcome(
            model="iris",
            version=str(version),
            request_id=f"r{self.rng.integers(1 << 62):x}-{self.sent}",
            caller="shop",
            given_by="shop",
            answered_at=datetime.now(UTC),
            rows=len(correct),
            kind="label",
            label=[0] * len(correct),
            correct=correct,
            correct_rows=sum(correct),
        )


@pytest.fixture
async def concluded(nats_module: EmbeddedNats) -> AsyncIterator[list[dict[str, Any]]]:
    """The `model.experiment_concluded` events published while the test runs."""
    seen: list[dict[str, Any]] = []
    nc = await nats.connect(nats_module.url)

    async def on_message(msg: Any) -> None:
        seen.append(orjson.loads(msg.data)["data"])

    await nc.subscribe("model.experiment_concluded.*", cb=on_message)
    yield seen
    await nc.close()


def test_bad_experiments_are_refused_with_the_reason(stack: LifecycleStack) -> None:
    unknown_model = start(stack, model="nope", versions=[1, 2], metric="accuracy", mde=0.03)
    assert unknown_model.status_code == 404 and "not deployed" in unknown_model.json()["error"]
    unknown_version = start(stack, versions=[1, 7], metric="accuracy", mde=0.03)
    assert unknown_version.status_code == 404 and "[7]" in unknown_version.json()["error"]
    for body, why in (
        ({"versions": [1], "metric": "accuracy", "mde": 0.03}, "versions"),
        ({"versions": [1, 2], "split": [60, 60], "metric": "accuracy", "mde": 0.03}, "summing to 100"),
        ({"versions": [1, 2], "metric": "accuracy", "mde": 3}, "(0, 1)"),
        ({"versions": [1, 2], "metric": "latency", "mde": 0.03}, "metric"),
        ({"versions": [1, 1], "metric": "accuracy", "mde": 0.03}, "must differ"),
    ):
        refused = start(stack, **body)
        assert refused.status_code == 422 and why in refused.json()["error"], (body, refused.text)
    stop_unknown = httpx.post(f"{stack.services['deployer'].url}/api/v1/experiments/nope/stop", json={"reason": "x"})
    assert stop_unknown.status_code == 404


async def test_a_better_challenger_wins_within_the_planned_samples(
    stack: LifecycleStack, nats_module: EmbeddedNats, concluded: list[dict[str, Any]]
) -> None:
    registry = stack.services["registry"].url
    started = start(stack, versions=[1, 2], split=[50, 50], metric="accuracy", mde=0.03)
    assert started.status_code == 201, started.text
    ident, planned = started.json()["id"], started.json()["planned_samples_per_arm"]
    assert route_shares(stack) == ({"1": 0.5, "2": 0.5}, True)
    again = start(stack, versions=[1, 2], metric="accuracy", mde=0.03)
    assert again.status_code == 409 and "already has a running experiment" in again.json()["error"]

    population = Population(nats_module.url, {1: 0.80, 2: 0.83}, seed=3)
    while experiment(stack, ident)["status"] == "running":
        assert population.sent * ROWS_PER_OUTCOME / 2 <= planned, "no decision within the planned samples"
        await population.feed(5)
        await asyncio.to_thread(
            wait_for,
            "outcomes counted",
            lambda: (
                sum(a["samples"] for a in experiment(stack, ident)["arms"]) >= population.sent * ROWS_PER_OUTCOME
                or experiment(stack, ident)["status"] != "running"
            ),
            30,
        )

    done = experiment(stack, ident)
    assert done["status"] == "concluded" and done["winner"] == 2, done
    assert done["verdict"]["p_value"] < 0.05 and done["verdict"]["effect"] > 0
    assert max(done["verdict"]["samples"].values()) <= planned
    assert len(done["history"]) >= 3 and done["history"][-1]["p_value"] < 0.05
    alias = httpx.get(f"{registry}/api/v1/models/iris/aliases/production/history").json()[0]
    assert alias["to_version"] == 2 and f"experiment {ident}: version 2 wins" in alias["reason"], alias
    assert "p = " in alias["reason"]
    shares, recording = await asyncio.to_thread(
        wait_for, "all traffic on v2", lambda: (s := route_shares(stack))[0].get("2") == 1.0 and s
    )
    assert shares["2"] == 1.0 and not recording
    event = await asyncio.to_thread(wait_for, "model.experiment_concluded", lambda: concluded)
    assert event[0]["winner"] == 2 and event[0]["outcome"] == "winner" and event[0]["traffic_moved"]
    assert event[0]["experiment_id"] == ident and event[0]["p_value"] < 0.05
    await asyncio.to_thread(wait_for, "v1 retired after its drain", lambda: serving(stack) == {2: "production"})


async def feed_until_decided(stack: LifecycleStack, ident: str, population: Population, answers: int) -> dict[str, Any]:
    """Feed outcomes `answers` per version at a time until the experiment ends; its final state."""

    def counted() -> bool:
        found = experiment(stack, ident)
        return (
            found["status"] != "running"
            or sum(a["samples"] for a in found["arms"]) >= population.sent * ROWS_PER_OUTCOME
        )

    while experiment(stack, ident)["status"] == "running":
        await population.feed(answers)
        await asyncio.to_thread(wait_for, "outcomes counted", counted, 30)
    return experiment(stack, ident)


async def test_equal_arms_end_with_no_difference_and_move_nothing(
    stack: LifecycleStack, nats_module: EmbeddedNats, concluded: list[dict[str, Any]]
) -> None:
    registry = stack.services["registry"].url
    artifacts = register(registry, stack.home, 3, W, rows=ROWS)
    await publish(nats_module.url, validated(3, artifacts), "validated-iris-3")
    await asyncio.to_thread(wait_for, "v3 canary", lambda: serving(stack).get(3) == "canary", 60)
    started = start(stack, versions=[2, 3], metric="accuracy", mde=0.03, max_samples_per_arm=3000)
    assert started.status_code == 201, started.text

    done = await feed_until_decided(stack, started.json()["id"], Population(nats_module.url, {2: 0.8, 3: 0.8}, 5), 10)

    assert done["status"] == "concluded" and done["winner"] is None, done
    assert "no difference" in done["reason"] and "no traffic moved" in done["reason"]
    event = await asyncio.to_thread(wait_for, "model.experiment_concluded", lambda: concluded)
    assert event[0]["outcome"] == "no_difference" and not event[0]["traffic_moved"] and "winner" not in event[0]
    alias = httpx.get(f"{registry}/api/v1/models/iris/aliases/production").json()
    assert alias["version"] == 2
    assert serving(stack) == {2: "production", 3: "canary"}
    shares, recording = route_shares(stack)
    assert shares == {"2": 0.9, "3": pytest.approx(0.1)} and not recording
    shown = gallery(stack, "experiment", "show", started.json()["id"])
    assert "control" in shown and "challenger" in shown and "concluded: experiment" in shown
    assert "no difference" in shown


async def test_the_bandit_moves_traffic_to_the_better_arm(stack: LifecycleStack, nats_module: EmbeddedNats) -> None:
    said = gallery(
        stack,
        "experiment",
        "start",
        "iris",
        "--versions",
        "2,3",
        "--metric",
        "accuracy",
        "--mde",
        "0.02",
        "--alpha",
        "0.001",
        "--policy",
        "bandit",
        "--floor",
        "0.1",
    )
    # found by its words: the CLI's output may hold log lines before it (httpx's, after tests that set logging up)
    started = re.search(r"^experiment (\w+) started on iris", said, re.MULTILINE)
    assert started is not None, said
    ident = started[1]
    listed = gallery(stack, "experiment", "list")
    assert ident in listed and "running" in listed and "bandit" in listed
    population = Population(nats_module.url, {2: 0.75, 3: 0.85}, seed=9)

    await population.feed(3)

    def moved() -> tuple[dict[str, float], bool] | None:
        shares, recording = route_shares(stack)
        return (shares, recording) if shares.get("3", 0.0) > 0.8 else None

    shares, recording = await asyncio.to_thread(wait_for, "v3 above 80 % of the route", moved, 30)
    assert recording and shares["2"] >= 0.1 - 1e-6  # the floor
    running = experiment(stack, ident)
    assert running["status"] == "running" and {a["version"]: a["share"] for a in running["arms"]}[3] > 0.8
    assert any(point["shares"]["3"] > 0.8 for point in running["history"])

    assert f"experiment {ident} stopped" in gallery(stack, "experiment", "stop", ident, "--reason", "enough seen")
    stopped = experiment(stack, ident)
    assert stopped["status"] == "stopped" and stopped["reason"] == "enough seen"
    assert route_shares(stack) == ({"2": 0.9, "3": pytest.approx(0.1)}, False)
    again = httpx.post(f"{stack.services['deployer'].url}/api/v1/experiments/{ident}/stop", json={"reason": "x"})
    assert again.status_code == 409


async def test_a_malformed_outcome_is_dead_lettered_with_the_reason(nats_module: EmbeddedNats) -> None:
    async with EventBus(nats_module.url, "/tests/population") as bus:
        good = make_event(Population(nats_module.url, {}, 0).outcome(3, [True]), "/tests/population", event_id="bad-1")
        broken = good.to_json().replace(b'"rows":1', b'"rows":0')
        await bus.publish_raw(good.nats_subject, broken, {"Nats-Msg-Id": "bad-1"})

        async def refused() -> list[DeadLetter]:
            return [
                d for d in await bus.dead_letters() if d.consumer == "deployer-experiments" and d.event_id == "bad-1"
            ]

        letters = await eventually(refused, 30, "the outcome dead-lettered")
    assert "invalid outcome event" in letters[0].reason and "rows" in letters[0].reason


def drawn(browser: WebDriver, page: str) -> None:
    """Wait until the Gallery's router has drawn `page` (it marks <main id=view> with data-ready)."""
    WebDriverWait(browser, 30, poll_frequency=0.1).until(
        lambda d: d.find_element(By.ID, "view").get_attribute("data-ready") == page, message=f"no {page} page"
    )


def test_the_gallery_shows_the_experiment_with_its_curves_and_decision(stack: LifecycleStack) -> None:
    gallery = stack.services["gallery"].url
    won = next(e for e in httpx.get(f"{gallery}/api/deployer/api/v1/experiments").json() if e["winner"] == 2)
    with headless_chromium() as browser:
        browser.get(f"{gallery}/models/iris")
        drawn(browser, "model")
        rows = WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#experiments tbody tr"))
        assert len(rows) == 3 and "v2 won" in browser.find_element(By.ID, "experiments").text
        browser.find_element(By.CSS_SELECTOR, f'#experiments tr[data-experiment="{won["id"]}"] a').click()
        drawn(browser, "experiment")

        assert browser.current_url == f"{gallery}/models/iris/experiments/{won['id']}"
        decision = browser.find_element(By.ID, "decision")
        assert decision.get_attribute("data-winner") == "2" and "v2 won" in decision.text
        assert f"experiment {won['id']}: version 2 wins" in decision.text
        assert "p-value (always valid)" in browser.find_element(By.ID, "evidence").text
        arms = {
            r.get_attribute("data-version"): r.text for r in browser.find_elements(By.CSS_SELECTOR, "#arms tbody tr")
        }
        assert set(arms) == {"1", "2"} and "control" in arms["1"] and "100.0 %" in arms["2"]
        for chart in ("means", "shares", "p-value"):
            lines = browser.find_elements(By.CSS_SELECTOR, f'figure[data-chart="{chart}"] path.line')
            assert lines, f"the {chart} chart has no curve"
        # the optimizer and the monitor are not in this stack: their sections' refused requests are the only
        # ones allowed
        absent = ("/api/optimizer/", "/api/monitor/")
        severe = [
            e
            for e in browser.get_log("browser")
            if e["level"] == "SEVERE" and not (any(a in e["message"] for a in absent) and "502" in e["message"])
        ]
        assert severe == [], severe
