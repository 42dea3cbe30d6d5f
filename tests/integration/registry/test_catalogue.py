"""The Gallery's catalogue and card text in the registry store, on SQLite and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from gallery_common.db import make_engine
from gallery_common.errors import BadRequest, NotFound
from gallery_common.events import Lineage
from gallery_registry.catalogue import CatalogueQuery, CatalogueSort, summary_of
from gallery_registry.migrations import current_revision, upgrade
from gallery_registry.schemas import (
    ModelCreate,
    ModelUpdate,
    ValidationPolicyUpdate,
    VersionCreate,
    VersionStatus,
)
from gallery_registry.store import RegistryStore, open_registry
from gallery_registry.store_cards import CardUpdate


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return request.getfixturevalue("postgres_server").new_database()  # type: ignore[no-any-return]


@pytest.fixture
def store(url: str) -> Iterator[RegistryStore]:
    registry = open_registry(url)
    yield registry
    registry.engine.dispose()


def decide(store: RegistryStore, name: str, version: int, status: VersionStatus, report: dict[str, Any]) -> None:
    store.set_version_status(name, version, VersionStatus.validating)
    store.set_version_status(name, version, status, evaluation_report=report)


@pytest.fixture
def seeded(store: RegistryStore) -> RegistryStore:
    """alpha: production v1 (gate 0.82) and a pending v2 claiming 0.99; beta: regression, validated, no
    alias; gamma: no versions; delta: one rejected version."""
    store.create_model(
        ModelCreate(name="alpha-digits", description="\n# Digits classifier\nmore", owner="ann", tags={"team": "cv"})
    )
    store.register_version(
        "alpha-digits",
        VersionCreate(
            metrics={"accuracy": 0.80, "val_loss": 0.5},
            task="classification",
            lineage=Lineage(dataset_fingerprint="sha256:d1"),
        ),
    )
    decide(
        store,
        "alpha-digits",
        1,
        VersionStatus.validated,
        {"accuracy": 0.82, "macro_f1": 0.8, "n_test": 100, "per_class_recall": {"0": 0.9}, "latency_p50_ms": 0.1},
    )
    store.merge_version_tags(
        "alpha-digits",
        1,
        {
            "optimizer.recommended": "int8_dynamic",
            "optimizer.recommended_size_bytes": "25000",
            "optimizer.recommended_p50_ms": "0.031",
        },
    )
    store.set_alias("alpha-digits", "production", 1, actor="test")
    store.register_version("alpha-digits", VersionCreate(metrics={"accuracy": 0.99}, task="classification"))

    store.register_version("beta-iris", VersionCreate(task="regression"), create_model=True)
    decide(store, "beta-iris", 1, VersionStatus.validated, {"rmse": 0.3, "r2": 0.9, "latency_p50_ms": 0.2})

    store.create_model(ModelCreate(name="gamma", description="Speech to text", tags={"team": "nlp"}))

    store.register_version("delta", VersionCreate(task="classification"), create_model=True)
    decide(store, "delta", 1, VersionStatus.rejected, {"accuracy": 0.4})
    store.set_validation_policy("delta", ValidationPolicyUpdate(champion_metric="macro_f1"))
    return store


def names(store: RegistryStore, **query: Any) -> list[str]:
    return [entry.name for entry in store.catalogue(CatalogueQuery(**query)).models]


def test_a_page_shows_each_model_with_its_featured_version(seeded: RegistryStore) -> None:
    page = seeded.catalogue(CatalogueQuery())
    assert [e.name for e in page.models] == ["alpha-digits", "beta-iris", "delta", "gamma"]
    assert (page.total, page.next_page_token) == (4, None)
    alpha, beta, delta, gamma = page.models

    assert (alpha.summary, alpha.owner, alpha.tags, alpha.task) == (
        "Digits classifier",
        "ann",
        {"team": "cv"},
        "classification",
    )
    assert (alpha.latest_version, alpha.version_count) == (2, 2)
    production = alpha.production
    assert production is not None
    # the production version, not the newer pending one; the gate's 0.82 over the trainer's 0.80
    assert (production.version, production.semver, production.status) == (1, "1.0.0", VersionStatus.validated)
    assert production.aliases == ["production"]
    assert production.metrics["accuracy"] == 0.82 and production.metrics["val_loss"] == 0.5
    assert "n_test" not in production.metrics and "per_class_recall" not in production.metrics
    assert production.headline_metric is not None
    assert (production.headline_metric.name, production.headline_metric.value) == ("accuracy", 0.82)
    variant = production.recommended_variant
    assert variant is not None and (variant.name, variant.size_bytes, variant.p50_ms) == ("int8_dynamic", 25000, 0.031)

    # no production alias: the latest validated version, its first quality metric as headline
    assert beta.production is not None and (beta.production.version, beta.production.aliases) == (1, [])
    assert beta.task == "regression"
    assert beta.production.headline_metric is not None and beta.production.headline_metric.name == "rmse"
    assert beta.production.recommended_variant is None

    assert delta.production is None and delta.version_count == 1  # rejected only: nothing to feature
    assert (gamma.production, gamma.latest_version, gamma.version_count, gamma.task) == (None, None, 0, None)
    assert gamma.summary == "Speech to text"


def test_search_matches_name_description_and_tags_in_any_case(seeded: RegistryStore) -> None:
    assert names(seeded, q="DIGITS") == ["alpha-digits"]
    assert names(seeded, q="speech") == ["gamma"]  # description
    assert names(seeded, q="NLP") == ["gamma"]  # tag value
    assert names(seeded, q="team") == ["alpha-digits", "gamma"]  # tag key
    assert names(seeded, q="100%") == []  # '%' is literal, not a wildcard
    assert names(seeded, q="nothing like it") == []


def test_filters_by_task_stage_tag_and_metric(seeded: RegistryStore) -> None:
    assert names(seeded, task="regression") == ["beta-iris"]
    assert names(seeded, task="classification") == ["alpha-digits", "delta"]
    assert names(seeded, stage="production") == ["alpha-digits"]
    assert names(seeded, stage="rejected") == ["delta"]
    assert names(seeded, stage="pending") == ["alpha-digits"]
    assert names(seeded, stage="validated") == ["alpha-digits", "beta-iris"]
    with pytest.raises(BadRequest, match="unknown stage 'staging'"):
        names(seeded, stage="staging")
    assert names(seeded, tags={"team": "cv"}) == ["alpha-digits"]
    assert names(seeded, tags={"team": None}) == ["alpha-digits", "gamma"]
    assert names(seeded, tags={"team": None}, q="speech") == ["gamma"]
    # the featured version's metric: alpha's production 0.82 counts, its pending 0.99 does not
    assert names(seeded, metric="accuracy", min_metric=0.81) == ["alpha-digits"]
    assert names(seeded, metric="accuracy", min_metric=0.83) == []
    assert names(seeded, metric="r2", min_metric=0.5) == ["beta-iris"]
    # a key holding something other than a number matches nothing (and breaks nothing)
    assert names(seeded, metric="per_class_recall", min_metric=0) == []
    with pytest.raises(BadRequest, match="min_metric needs metric"):
        names(seeded, min_metric=0.5)
    with pytest.raises(BadRequest, match="invalid metric"):
        names(seeded, metric="a'b", min_metric=0.5)


def test_sorts_and_pages(seeded: RegistryStore) -> None:
    by_metric = names(seeded, sort=CatalogueSort.metric, metric="latency_p50_ms", descending=True)
    assert by_metric == ["beta-iris", "alpha-digits", "delta", "gamma"]  # models without it last
    ascending = names(seeded, sort=CatalogueSort.metric, metric="latency_p50_ms")
    assert ascending == ["alpha-digits", "beta-iris", "delta", "gamma"]
    with pytest.raises(BadRequest, match="sort=metric needs metric"):
        names(seeded, sort=CatalogueSort.metric)
    seeded.update_model("beta-iris", ModelUpdate(owner="bob"))
    assert names(seeded, sort=CatalogueSort.updated, descending=True)[0] == "beta-iris"
    assert names(seeded, descending=True) == ["gamma", "delta", "beta-iris", "alpha-digits"]

    first = seeded.catalogue(CatalogueQuery(limit=3))
    assert [e.name for e in first.models] == ["alpha-digits", "beta-iris", "delta"] and first.total == 4
    assert first.next_page_token is not None
    from gallery_registry.paging import decode_page_token

    second = seeded.catalogue(CatalogueQuery(limit=3, offset=decode_page_token(first.next_page_token)))
    assert ([e.name for e in second.models], second.total, second.next_page_token) == (["gamma"], 4, None)
    filtered = seeded.catalogue(CatalogueQuery(limit=1, stage="validated"))
    assert (len(filtered.models), filtered.total, filtered.next_page_token is not None) == (1, 2, True)


def test_card_text_keeps_its_history_and_the_description_in_step(store: RegistryStore) -> None:
    store.create_model(ModelCreate(name="iris", description="flowers"))
    fresh = store.get_card("iris")
    assert (fresh.revision, fresh.description, fresh.intended_use, fresh.limitations) == (0, "flowers", None, None)
    assert store.card_history("iris") == []
    assert store.set_card("iris", CardUpdate(description="flowers")).revision == 0  # nothing changed

    first = store.set_card("iris", CardUpdate(intended_use="teaching"), actor="ann")
    assert (first.revision, first.description, first.intended_use, first.updated_by) == (
        1,
        "flowers",
        "teaching",
        "ann",
    )
    second = store.set_card(
        "iris", CardUpdate(description="# Iris\nthree species", limitations="tiny data"), actor="bob"
    )
    assert (second.revision, second.intended_use, second.limitations) == (2, "teaching", "tiny data")
    assert store.get_model("iris").description == "# Iris\nthree species"
    same = store.set_card("iris", CardUpdate(limitations="tiny data"), actor="bob")
    assert same.revision == 2  # nothing changed: no revision

    store.update_model("iris", ModelUpdate(description="renamed in the model"))
    card = store.get_card("iris")
    assert (card.revision, card.description, card.limitations, card.updated_by) == (
        3,
        "renamed in the model",
        "tiny data",
        None,
    )
    cleared = store.set_card("iris", CardUpdate(intended_use=None), actor="ann")
    assert (cleared.revision, cleared.intended_use) == (4, None)

    history = store.card_history("iris")
    assert [h.revision for h in history] == [4, 3, 2, 1]  # newest first
    assert [h.description for h in history][2:] == ["# Iris\nthree species", "flowers"]
    assert history[-1].updated_by == "ann" and history[-2].updated_by == "bob"

    with pytest.raises(NotFound):
        store.get_card("nope")
    with pytest.raises(NotFound):
        store.set_card("nope", CardUpdate(intended_use="x"))
    store.delete_model("iris")  # revisions go with the model
    store.create_model(ModelCreate(name="iris"))
    assert store.card_history("iris") == []


def test_a_database_at_the_first_revision_is_migrated_with_its_rows(url: str) -> None:
    engine = make_engine(url)
    try:
        upgrade(engine, "0001")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO registered_model (name, description, last_version, created_at, updated_at) "
                    "VALUES ('old', 'kept', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                )
            )
        upgrade(engine)
        assert current_revision(engine) == "0004"
        migrated = RegistryStore(engine)
        assert migrated.get_card("old").description == "kept"
        assert migrated.set_card("old", CardUpdate(intended_use="x")).revision == 1
    finally:
        engine.dispose()


def test_summary_is_the_first_line_without_a_heading_mark() -> None:
    assert summary_of(None) is None
    assert summary_of("\n\n  ## Title  \nbody") == "Title"
    assert summary_of("plain\nsecond") == "plain"
    assert summary_of("#\n \nlater") == "later"
