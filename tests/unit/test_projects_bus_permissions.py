"""The permission table of project-bound NATS users: what each may do is exactly its project's part of the
lifecycle bus, and nothing through which another project's events could be read or changed."""

from __future__ import annotations

import pytest

from gallery_common.consumer import filter_subjects, scoped_durable
from gallery_common.events import ModelDegraded, ModelTrained, ModelValidated, subject_for
from gallery_common.nats_auth import BINDABLE_SERVICES, bound_project, inbox_prefix, principals, project_user

EVENTS = "MODEL_EVENTS"


def test_the_default_installation_has_no_project_bound_users_and_publishes_in_every_project() -> None:
    table = principals()
    assert not [name for name in table if bound_project(name)], (
        "k8s and `gallery up` without projects stay as they were"
    )
    assert "model.trained.*" in table["trainer"].publish and "model.trained" not in table["trainer"].publish
    assert {"model.validated.*", "model.rejected.*"} <= set(table["registry"].publish)


@pytest.mark.parametrize("service", sorted(BINDABLE_SERVICES))
def test_a_project_bound_user_holds_only_its_projects_part_of_the_lifecycle_bus(service: str) -> None:
    table = principals(projects=["beta", "alpha", "alpha"])
    bound = table[project_user(service, "alpha")]
    assert bound.name == f"{service}_alpha" and f"{service}_beta" in table
    events, durables = BINDABLE_SERVICES[service]
    lifecycle = {s for s in bound.publish if s.startswith(("model.", "dlq."))}
    assert lifecycle == {*(subject_for(e, "alpha") for e in events), "dlq.model.*.alpha"}
    creates = {s for s in bound.publish if (".CONSUMER.CREATE." in s or ".DURABLE." in s) and EVENTS in s}
    assert creates == {f"$JS.API.CONSUMER.CREATE.{EVENTS}.{d}_alpha.model.*.alpha" for d in durables}
    for forbidden in ("MSG.GET", "DIRECT.GET", f"STREAM.UPDATE.{EVENTS}", f"STREAM.CREATE.{EVENTS}", "$JS.API.>"):
        assert not [s for s in bound.publish if (forbidden in s and EVENTS in s) or s == forbidden], forbidden
    assert bound.subscribe == (f"{inbox_prefix(bound.name)}.>",)
    # its replies come on an inbox that no installation-wide user's inbox permission covers
    assert not inbox_prefix(bound.name).startswith(inbox_prefix(service) + ".")


def test_only_a_lifecycle_service_and_a_project_name_make_a_project_bound_user() -> None:
    assert bound_project("trainer_alpha") == "alpha" and bound_project("deployer_team-b") == "team-b"
    for user in ("trainer", "cli", "my_plugin", "trainer_Alpha", "trainer_"):
        assert bound_project(user) is None, user


def test_a_scoped_consumer_has_one_filter_per_project_and_a_durable_of_its_own() -> None:
    assert filter_subjects([ModelTrained], ()) == ["model.trained.*"]
    assert filter_subjects(None, ()) == ["model.>"]
    assert filter_subjects([ModelTrained], ["beta", "alpha"]) == ["model.trained.alpha", "model.trained.beta"]
    assert filter_subjects([ModelValidated, ModelDegraded], ["alpha"]) == ["model.*.alpha"]
    assert scoped_durable("registry-gate", []) == "registry-gate"
    assert scoped_durable("registry-gate", ["beta", "alpha"]) == "registry-gate_alpha_beta"
