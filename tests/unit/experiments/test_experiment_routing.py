"""What an experiment does to its model's route, and how p99 and error-rate arms are counted."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest

from gallery_common.contracts.serving_metrics import ServingCounts
from gallery_common.errors import InvalidRequest
from gallery_deployer.experiments.controller import ExperimentPlan, Experiments, tail_figures
from gallery_deployer.experiments.records import ExperimentRecord
from gallery_deployer.gateway.routes import Backend, BackendRole, ModelRoute, RoutePolicy


def backend(ident: str, version: str, weight: float, role: BackendRole = BackendRole.primary) -> Backend:
    return Backend(id=ident, url=f"http://10.0.0.{len(ident)}:8500", version=version, weight=weight, role=role)


def experiments_running(shares: dict[str, float]) -> Experiments:
    controller: Any = SimpleNamespace()
    experiments = Experiments(controller, store=None, publish=None)  # type: ignore[arg-type]
    record = ExperimentRecord(model="iris", versions=[3, 4], split=[50, 50], metric="accuracy", mde=0.03, alpha=0.05)
    record.shares = shares
    experiments._running["iris"] = record
    assert controller.route_overlay == experiments.route_of  # the controller applies it to every route it writes
    return experiments


def test_a_running_experiment_splits_its_arms_over_their_replicas_and_asks_for_outcomes() -> None:
    route = ModelRoute(
        backends=[
            backend("v3-0", "3", 45.0),
            backend("v3-1", "3", 45.0),
            backend("v4-0", "4", 10.0, BackendRole.canary),
            backend("v2-0", "2", 0.0),  # a previous version still draining: a fallback only
        ],
        policy=RoutePolicy(),
    )
    experiments = experiments_running({"3": 0.2, "4": 0.8})

    split = experiments.route_of("iris", route)

    assert {b.id: b.weight for b in split.backends} == {"v3-0": 10.0, "v3-1": 10.0, "v4-0": 80.0, "v2-0": 0.0}
    assert split.policy.record_outcomes and not route.policy.record_outcomes
    other = ModelRoute(backends=[backend("a-0", "1", 100.0)])
    assert experiments.route_of("digits", other) is other  # no experiment: untouched


def test_an_experiment_whose_arms_have_no_ready_replica_leaves_the_route_alone() -> None:
    route = ModelRoute(backends=[backend("v9-0", "9", 100.0)])
    assert experiments_running({"3": 0.5, "4": 0.5}).route_of("iris", route) is route


def counts(buckets: dict[float, float]) -> ServingCounts:
    return ServingCounts(requests={"ok": max(buckets.values())}, buckets=buckets)


def test_p99_arms_count_the_requests_slower_than_the_controls_p99() -> None:
    control = counts({0.005: 990.0, 0.01: 1000.0, math.inf: 1000.0})
    slower = counts({0.005: 800.0, 0.01: 990.0, math.inf: 1000.0})

    figures = tail_figures({3: control, 4: slower}, control=3)

    assert (figures[3].n, figures[3].total) == (1000, 10.0)  # 1 % past the control's own p99
    assert (figures[4].n, figures[4].total) == (1000, 200.0)
    assert tail_figures({3: ServingCounts(), 4: slower}, control=3)[4].n == 0  # nothing to compare with yet


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"versions": [3, 3]}, "must differ"),
        ({"split": [50.0]}, "1 shares for 2 versions"),
        ({"split": [70.0, 40.0]}, "summing to 100"),
        ({"mde": 1.5}, "in (0, 1)"),
        ({"policy": "bandit", "floor": 0.6}, "more than all the traffic"),
    ],
)
def test_plans_no_test_can_run_are_refused_with_the_reason(changes: dict[str, Any], reason: str) -> None:
    plan: dict[str, Any] = {"model": "iris", "versions": [3, 4], "split": [50.0, 50.0], "metric": "accuracy"}
    with pytest.raises(InvalidRequest, match=reason.replace("(", r"\(").replace(")", r"\)")):
        ExperimentPlan(**{**plan, "mde": 0.03, **changes}).check()
