"""The registry store's contract, run against SQLite and a real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from federated_lineage import federation, site_metrics

from gallery_common.errors import Conflict, InvalidRequest, NotFound
from gallery_common.events import ArtifactRef, Lineage, ModelTrained, Signature, TensorSpec, make_event
from gallery_registry.gate.validator import registration_for
from gallery_registry.migrations import current_revision, upgrade
from gallery_registry.paging import decode_page_token
from gallery_registry.schemas import (
    ArtifactRole,
    ModelCreate,
    ModelOrder,
    ModelQuery,
    ModelUpdate,
    ValidationPolicyUpdate,
    VersionCreate,
    VersionQuery,
    VersionStatus,
    VersionUpdate,
)
from gallery_registry.store import RegistryStore, open_registry


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RegistryStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
    else:
        url = request.getfixturevalue("postgres_server").new_database()
    registry = open_registry(url)
    yield registry
    registry.engine.dispose()


def signature(features: int = 4, classes: int = 3) -> Signature:
    return Signature(
        inputs=[TensorSpec(name="features", datatype="FP32", shape=[-1, features])],
        outputs=[TensorSpec(name="logits", datatype="FP32", shape=[-1, classes])],
    )


def ref(byte: str = "a", uri: str = "file:///artifacts/m.onnx") -> ArtifactRef:
    return ArtifactRef(uri=uri, sha256=byte * 64, size=10, format="onnx")


def test_schema_is_at_head_and_upgrading_again_changes_nothing(store: RegistryStore) -> None:
    assert current_revision(store.engine) == "0004"
    store.create_model(ModelCreate(name="kept"))
    upgrade(store.engine)
    assert current_revision(store.engine) == "0004"
    assert store.get_model("kept").name == "kept"


def test_model_create_get_update_delete(store: RegistryStore) -> None:
    created = store.create_model(ModelCreate(name="iris", description="flowers", owner="ann", tags={"team": "cv"}))
    assert (created.name, created.description, created.owner, created.tags) == (
        "iris",
        "flowers",
        "ann",
        {"team": "cv"},
    )
    assert created.latest_version is None and created.aliases == {}
    assert created.created_at.tzinfo is not None

    with pytest.raises(Conflict, match="already exists"):
        store.create_model(ModelCreate(name="iris"))

    updated = store.update_model("iris", ModelUpdate(owner="bob"))
    assert (updated.owner, updated.description, updated.tags) == ("bob", "flowers", {"team": "cv"})
    assert updated.updated_at >= created.updated_at
    cleared = store.update_model("iris", ModelUpdate(description=None, tags={"stage": "beta"}))
    assert (cleared.description, cleared.tags) == (None, {"stage": "beta"})

    store.set_model_tag("iris", "team", "nlp")
    assert store.get_model("iris").tags == {"stage": "beta", "team": "nlp"}
    store.delete_model_tag("iris", "stage")
    assert store.get_model("iris").tags == {"team": "nlp"}
    with pytest.raises(NotFound, match="no tag 'stage'"):
        store.delete_model_tag("iris", "stage")
    with pytest.raises(InvalidRequest, match="tag key"):
        store.set_model_tag("iris", "bad key", "x")

    store.delete_model("iris")
    with pytest.raises(NotFound, match="model 'iris' not found"):
        store.get_model("iris")
    with pytest.raises(NotFound):
        store.update_model("iris", ModelUpdate(owner="x"))


def test_search_filters_order_and_pages(store: RegistryStore) -> None:
    for name, owner, tags in [
        ("alpha-digits", "ann", {"team": "cv"}),
        ("Beta_Digits", "bob", {"team": "nlp"}),
        ("gamma", "ann", {"team": "cv", "gpu": "yes"}),
        ("delta", "bob", {}),
    ]:
        store.create_model(ModelCreate(name=name, owner=owner, tags=tags))

    def names(**kwargs: object) -> list[str]:
        return [m.name for m in store.search_models(ModelQuery(**kwargs)).models]  # type: ignore[arg-type]

    assert names(name_contains="digits") == ["Beta_Digits", "alpha-digits"]  # any case
    assert names(name_contains="a_d") == ["Beta_Digits"]  # "_" is literal, not a wildcard
    assert names(owner="ann") == ["alpha-digits", "gamma"]
    assert names(tags={"team": "cv"}) == ["alpha-digits", "gamma"]
    assert names(tags={"gpu": None}) == ["gamma"]
    assert names(tags={"team": "cv", "gpu": "yes"}) == ["gamma"]
    assert names(tags_not={"team": "cv"}) == ["Beta_Digits", "delta"]  # no tag counts as "not cv"
    assert names(name_like="%Digits") == ["Beta_Digits"]  # LIKE is case-sensitive everywhere
    assert names(name_ilike="%DIGITS") == ["Beta_Digits", "alpha-digits"]
    assert names(name_equals="gamma") == ["gamma"]
    assert names(order_by=ModelOrder.name, descending=True) == ["gamma", "delta", "alpha-digits", "Beta_Digits"]
    assert names(order_by=ModelOrder.created) == ["alpha-digits", "Beta_Digits", "gamma", "delta"]
    store.update_model("alpha-digits", ModelUpdate(description="touched"))
    assert names(order_by=ModelOrder.updated, descending=True)[0] == "alpha-digits"

    seen: list[str] = []
    offset = 0
    while True:
        page = store.search_models(ModelQuery(limit=3, offset=offset))
        seen += [m.name for m in page.models]
        if page.next_page_token is None:
            break
        offset = decode_page_token(page.next_page_token)
    assert seen == ["Beta_Digits", "alpha-digits", "delta", "gamma"]
    assert names(offset=3) == ["gamma"]


def test_versions_are_numbered_per_model_and_never_reused(store: RegistryStore) -> None:
    store.create_model(ModelCreate(name="a"))
    store.create_model(ModelCreate(name="b"))
    assert [store.register_version("a", VersionCreate()).version for _ in range(3)] == [1, 2, 3]
    assert store.register_version("b", VersionCreate()).version == 1
    store.delete_version("a", 3)
    with pytest.raises(NotFound, match="no version 3"):
        store.get_version("a", 3)
    fourth = store.register_version("a", VersionCreate())
    assert (fourth.version, fourth.semver) == (4, "1.3.0")  # 3 and 1.2.0 stay used
    assert store.get_model("a").latest_version == 4
    assert store.latest_version("a").version == 4
    with pytest.raises(NotFound, match="model 'nope' not found"):
        store.register_version("nope", VersionCreate())


def test_semver_follows_the_signature_and_explicit_values_must_increase(store: RegistryStore) -> None:
    store.create_model(ModelCreate(name="m"))

    def register(**kwargs: object) -> str:
        return store.register_version("m", VersionCreate(**kwargs)).semver  # type: ignore[arg-type]

    assert register(signature=signature(4)) == "1.0.0"
    assert register(signature=signature(4)) == "1.1.0"  # retrain, same signature
    assert register() == "1.2.0"  # no signature says nothing new
    assert register(signature=signature(8)) == "2.0.0"  # new input width
    assert register(signature=signature(8, classes=5)) == "3.0.0"
    assert register(semver="3.5.1") == "3.5.1"
    assert register(signature=signature(8, classes=5)) == "3.6.0"
    with pytest.raises(InvalidRequest, match=r"must be greater than the latest version's 3\.6\.0"):
        register(semver="3.6.0")
    with pytest.raises(InvalidRequest, match="not a valid semantic version"):
        register(semver="4.0")
    assert [v.semver for v in store.search_versions(VersionQuery(name="m", descending=False)).versions] == [
        "1.0.0",
        "1.1.0",
        "1.2.0",
        "2.0.0",
        "3.0.0",
        "3.5.1",
        "3.6.0",
    ]


def test_version_fields_round_trip(store: RegistryStore) -> None:
    created = store.register_version(
        "digits",
        VersionCreate(
            description="first",
            signature=signature(),
            metrics={"accuracy": 0.93},
            tags={"framework": "torch"},
            lineage=Lineage(training_job_id="job-1", dataset_fingerprint="fp", config_hash="cfg"),
            run_id="run-1",
            source_event_id="evt-1",
            source="file:///artifacts/run-1",
            task="classification",
            class_names=["a", "b", "c"],
            artifacts={ArtifactRole.onnx: ref("a"), ArtifactRole.test_split: ref("b", "file:///artifacts/t.npz")},
        ),
        create_model=True,
    )
    fetched = store.get_version("digits", 1)
    assert fetched == created
    assert fetched.status is VersionStatus.pending
    assert fetched.signature == signature()
    assert fetched.lineage.training_job_id == "job-1"
    assert fetched.class_names == ["a", "b", "c"]
    assert set(fetched.artifacts) == {ArtifactRole.onnx, ArtifactRole.test_split}
    assert fetched.artifacts[ArtifactRole.onnx].sha256 == "a" * 64
    assert store.find_version_by_event("evt-1") == fetched
    assert store.find_version_by_event("evt-unknown") is None


def test_registering_an_event_twice_gives_the_same_version(store: RegistryStore) -> None:
    first = store.register_version("m", VersionCreate(source_event_id="evt-1", run_id="r"), create_model=True)
    again = store.register_version("m", VersionCreate(source_event_id="evt-1", run_id="other"), create_model=True)
    assert again == first
    assert [v.version for v in store.search_versions(VersionQuery(name="m")).versions] == [1]
    with pytest.raises(Conflict, match="already registered version 1 of model 'm'"):
        store.register_version("other", VersionCreate(source_event_id="evt-1"), create_model=True)


def test_concurrent_registrations_get_distinct_numbers_and_one_version_per_event(store: RegistryStore) -> None:
    store.create_model(ModelCreate(name="busy"))
    results: list[int] = []
    errors: list[BaseException] = []

    def register(event: str) -> None:
        try:
            results.append(store.register_version("busy", VersionCreate(source_event_id=event)).version)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(f"evt-{i % 4}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(set(results)) == [1, 2, 3, 4]
    versions = store.search_versions(VersionQuery(name="busy")).versions
    assert sorted(v.version for v in versions) == [1, 2, 3, 4]
    assert len({v.semver for v in versions}) == 4


def test_status_moves_along_the_lifecycle_only(store: RegistryStore) -> None:
    store.register_version("m", VersionCreate(metrics={"loss": 0.3}), create_model=True)
    with pytest.raises(Conflict, match="cannot go from pending to validated; from pending it may go to archived"):
        store.set_version_status("m", 1, VersionStatus.validated)
    store.set_version_status("m", 1, VersionStatus.validating)
    store.set_version_status("m", 1, VersionStatus.validating)  # same status: no-op
    rejected = store.set_version_status(
        "m",
        1,
        VersionStatus.rejected,
        evaluation_report={"accuracy": 0.4},
        rejection_reasons=["accuracy 0.4 is below the policy minimum 0.7"],
        metrics={"accuracy": 0.4},
    )
    assert rejected.status is VersionStatus.rejected
    assert rejected.evaluation_report == {"accuracy": 0.4}
    assert rejected.rejection_reasons == ["accuracy 0.4 is below the policy minimum 0.7"]
    assert rejected.metrics == {"loss": 0.3, "accuracy": 0.4}
    archived = store.update_version("m", 1, VersionUpdate(status=VersionStatus.archived, description="old"))
    assert (archived.status, archived.description) == (VersionStatus.archived, "old")
    with pytest.raises(Conflict, match="archived is final"):
        store.update_version("m", 1, VersionUpdate(status=VersionStatus.validating))
    assert store.get_version("m", 1).status is VersionStatus.archived


def test_version_tags_and_search(store: RegistryStore) -> None:
    store.register_version("m", VersionCreate(run_id="r1", tags={"k": "1"}), create_model=True)
    store.register_version("m", VersionCreate(run_id="r2", source="s3://b/m2"), create_model=True)
    store.register_version("n", VersionCreate(run_id="r1"), create_model=True)
    store.set_version_tag("m", 2, "k", "2")
    store.update_version("m", 1, VersionUpdate(tags={"other": "x"}))
    assert store.get_version("m", 1).tags == {"other": "x"}

    def found(**kwargs: object) -> list[tuple[str, int]]:
        return [(v.name, v.version) for v in store.search_versions(VersionQuery(**kwargs)).versions]  # type: ignore[arg-type]

    assert found(run_id="r1") == [("m", 1), ("n", 1)]
    assert found(tags={"k": "2"}) == [("m", 2)]
    assert found(tags={"other": None}) == [("m", 1)]
    assert found(name="m", tags_not={"k": "2"}) == [("m", 1)]
    assert found(source="s3://b/m2") == [("m", 2)]
    assert found(name="m", version=1) == [("m", 1)]
    assert found(status=VersionStatus.pending, name_like="n") == [("n", 1)]
    page = store.search_versions(VersionQuery(name="m", limit=1))
    assert [v.version for v in page.versions] == [2] and page.next_page_token is not None
    store.delete_version_tag("m", 2, "k")
    with pytest.raises(NotFound, match="has no tag 'k'"):
        store.delete_version_tag("m", 2, "k")


def test_artifacts_are_immutable_per_role(store: RegistryStore) -> None:
    store.register_version("m", VersionCreate(artifacts={ArtifactRole.onnx: ref("a")}), create_model=True)
    first = store.attach_artifact("m", 1, ArtifactRole.int8, ref("b", "file:///artifacts/m.int8.onnx"))
    again = store.attach_artifact("m", 1, ArtifactRole.int8, ref("b", "file:///artifacts/m.int8.onnx"))
    assert again == first  # same role, same sha256: nothing changes
    with pytest.raises(Conflict, match=r"already has a int8 artifact with sha256 b{64}"):
        store.attach_artifact("m", 1, ArtifactRole.int8, ref("c"))
    with pytest.raises(Conflict, match="onnx"):
        store.attach_artifact("m", 1, ArtifactRole.onnx, ref("c"))
    artifacts = store.get_version("m", 1).artifacts
    assert {role: a.sha256[0] for role, a in artifacts.items()} == {ArtifactRole.onnx: "a", ArtifactRole.int8: "b"}
    with pytest.raises(NotFound, match="no version 9"):
        store.attach_artifact("m", 9, ArtifactRole.report, ref("d"))


def test_aliases_move_with_an_append_only_history(store: RegistryStore) -> None:
    for _ in range(3):
        store.register_version("m", VersionCreate(), create_model=True)
    set_one = store.set_alias("m", "production", 1, actor="ann", reason="first release")
    assert (set_one.version, set_one.updated_by) == (1, "ann")
    store.set_alias("m", "production", 2, actor="bob", reason="better accuracy")
    store.set_alias("m", "production", 2, actor="bob", reason="again")  # already there: no history entry
    store.set_alias("m", "staging", 3, actor="ci")
    assert store.get_version_by_alias("m", "production").version == 2
    assert store.get_version("m", 2).aliases == ["production"]
    assert store.get_model("m").aliases == {"production": 2, "staging": 3}
    assert [(a.alias, a.version) for a in store.list_aliases("m")] == [("production", 2), ("staging", 3)]

    store.delete_alias("m", "staging", actor="ci", reason="done")
    with pytest.raises(NotFound, match="no alias 'staging'"):
        store.get_version_by_alias("m", "staging")
    with pytest.raises(NotFound, match="no alias 'staging'"):
        store.delete_alias("m", "staging", actor="ci")

    history = store.alias_history("m")
    assert [(h.alias, h.from_version, h.to_version, h.actor, h.reason) for h in history] == [
        ("staging", 3, None, "ci", "done"),
        ("staging", None, 3, "ci", None),
        ("production", 1, 2, "bob", "better accuracy"),
        ("production", None, 1, "ann", "first release"),
    ]
    assert [h.to_version for h in store.alias_history("m", "production")] == [2, 1]
    assert history[0].at >= history[-1].at

    with pytest.raises(NotFound, match="no version 7"):
        store.set_alias("m", "canary", 7, actor="ann")
    with pytest.raises(InvalidRequest, match="alias '1bad' is invalid"):
        store.set_alias("m", "1bad", 1, actor="ann")
    with pytest.raises(InvalidRequest, match="reserved"):
        store.set_alias("m", "latest", 1, actor="ann")
    with pytest.raises(NotFound, match="model 'nope' not found"):
        store.get_version_by_alias("nope", "production")


def test_deleting_a_version_removes_its_aliases_and_records_it(store: RegistryStore) -> None:
    store.register_version("m", VersionCreate(), create_model=True)
    store.register_version("m", VersionCreate(), create_model=True)
    store.set_alias("m", "champion", 2, actor="ann")
    store.delete_version("m", 2, actor="bob")
    with pytest.raises(NotFound):
        store.get_version_by_alias("m", "champion")
    latest = store.alias_history("m", "champion")[0]
    assert (latest.from_version, latest.to_version, latest.actor, latest.reason) == (
        2,
        None,
        "bob",
        "version 2 deleted",
    )


def test_lineage_walks_parents_newest_first(store: RegistryStore) -> None:
    store.register_version(
        "m", VersionCreate(lineage=Lineage(training_job_id="j1", dataset_fingerprint="d1")), create_model=True
    )
    store.register_version("m", VersionCreate(lineage=Lineage(training_job_id="j2", parent_version=1)))
    store.register_version(
        "m", VersionCreate(lineage=Lineage(training_job_id="j3", config_hash="c3", parent_version=2))
    )
    lineage = store.lineage("m", 3)
    assert [(s.version, s.training_job_id, s.parent_version) for s in lineage.chain] == [
        (3, "j3", 2),
        (2, "j2", 1),
        (1, "j1", None),
    ]
    assert lineage.chain[-1].dataset_fingerprint == "d1" and lineage.missing_parent is None
    with pytest.raises(InvalidRequest, match="parent_version 9 is not a version of model 'm'"):
        store.register_version("m", VersionCreate(lineage=Lineage(parent_version=9)))
    store.delete_version("m", 2)
    broken = store.lineage("m", 3)
    assert [s.version for s in broken.chain] == [3] and broken.missing_parent == 2
    with pytest.raises(NotFound, match="no version 2"):
        store.lineage("m", 2)


def test_a_federated_version_keeps_its_sites_rounds_and_privacy_budget(store: RegistryStore) -> None:
    # registered the way the gate registers a model.trained event
    trained = ModelTrained(
        model="fed",
        run_id="run-fed",
        artifacts={},
        metrics=site_metrics(),
        lineage=Lineage(training_job_id="job-fed", federation=federation(secure=True)),
    )
    registered = store.register_version("fed", registration_for(make_event(trained, "/trainer")), create_model=True)
    store.register_version("fed", VersionCreate(lineage=Lineage(parent_version=1)))

    fetched = store.get_version("fed", 1)
    assert fetched == registered
    assert fetched.lineage.federation == federation(secure=True)
    assert fetched.lineage.training_job_id == "job-fed"
    assert fetched.metrics["site.lab-east.val_accuracy"] == 0.887
    assert store.search_versions(VersionQuery(name="fed", version=1)).versions[0].lineage.federation is not None
    assert store.get_version("fed", 2).lineage.federation is None, "trained in one place"
    assert [s.federation for s in store.lineage("fed", 2).chain] == [None, federation(secure=True)]


def test_validation_policy_defaults_and_updates(store: RegistryStore) -> None:
    store.create_model(ModelCreate(name="m"))
    default = store.get_validation_policy("m")
    assert default.min_metrics == {"accuracy": 0.7}
    assert default.max_metrics == {"latency_p99_ms": 50.0}
    assert (default.champion_alias, default.champion_metric, default.champion_tolerance) == (
        "production",
        "accuracy",
        0.01,
    )
    assert default.updated_at is None

    custom = store.set_validation_policy(
        "m", ValidationPolicyUpdate(min_metrics={"f1": 0.8}, champion_alias="champion", champion_tolerance=0.0)
    )
    assert custom.updated_at is not None
    fetched = store.get_validation_policy("m")
    assert fetched == custom
    assert fetched.min_metrics == {"f1": 0.8} and fetched.max_metrics == {"latency_p99_ms": 50.0}
    assert fetched.champion_alias == "champion" and fetched.champion_tolerance == 0.0
    with pytest.raises(NotFound):
        store.get_validation_policy("nope")
    with pytest.raises(NotFound):
        store.set_validation_policy("nope", ValidationPolicyUpdate())


def test_a_regressor_without_a_policy_is_held_to_r2_not_to_an_accuracy_it_cannot_have(store: RegistryStore) -> None:
    """The defaults follow the task of the model's latest version: a regressor reports rmse, mae and r2,
    and with the classifier's defaults every regressor was rejected for "metric accuracy not produced"."""
    store.register_version("house-prices", VersionCreate(task="regression"), create_model=True)
    regressor = store.get_validation_policy("house-prices")
    assert regressor.min_metrics == {"r2": 0.5} and regressor.champion_metric == "r2"
    assert regressor.max_metrics == {"latency_p99_ms": 50.0} and regressor.updated_at is None
    store.register_version("house-prices", VersionCreate(task="classification"))
    assert store.get_validation_policy("house-prices").min_metrics == {"accuracy": 0.7}
    # a policy the owner set is theirs, whatever the task
    store.set_validation_policy("house-prices", ValidationPolicyUpdate(min_metrics={"r2": 0.9}))
    store.register_version("house-prices", VersionCreate(task="regression"))
    assert store.get_validation_policy("house-prices").min_metrics == {"r2": 0.9}


def test_deleting_a_model_deletes_everything_below_it(store: RegistryStore) -> None:
    store.register_version(
        "m", VersionCreate(source_event_id="e1", artifacts={ArtifactRole.onnx: ref()}), create_model=True
    )
    store.register_version("m", VersionCreate(tags={"k": "v"}))
    store.set_alias("m", "production", 1, actor="ann")
    store.set_validation_policy("m", ValidationPolicyUpdate(min_metrics={}))
    store.delete_model("m")
    assert store.search_versions(VersionQuery(name="m")).versions == []
    assert store.find_version_by_event("e1") is None
    store.create_model(ModelCreate(name="m"))
    assert store.alias_history("m") == []
    assert store.get_validation_policy("m").updated_at is None
    fresh = store.register_version("m", VersionCreate(source_event_id="e1"))
    assert (fresh.version, fresh.semver, fresh.artifacts) == (1, "1.0.0", {})
