"""The subset of MLflow's search syntax the registry's MLflow API accepts."""

from __future__ import annotations

import pytest

from gallery_common.errors import InvalidRequest
from gallery_registry.mlflow_filter import Condition, model_query, parse_filter, version_query
from gallery_registry.schemas import ModelOrder, VersionOrder


def test_clauses_joined_by_and() -> None:
    assert parse_filter("name LIKE 'dig%' AND tags.`mlflow.prompt.is_prompt` != 'true'") == [
        Condition("name", "LIKE", "dig%"),
        Condition("tags.mlflow.prompt.is_prompt", "!=", "true"),
    ]
    assert parse_filter('tag.team = "cv" and version_number = 3') == [
        Condition("tags.team", "=", "cv"),
        Condition("version_number", "=", 3),
    ]
    assert parse_filter("name = 'it\\'s'") == [Condition("name", "=", "it's")]
    assert parse_filter("") == [] and parse_filter(None) == []


def test_model_query_maps_every_supported_clause() -> None:
    query = model_query(
        "name ILIKE '%DIG%' AND tags.team = 'cv' AND tags.x != 'y'", ["last_updated_timestamp DESC"], 50, 10
    )
    assert (query.name_ilike, query.tags, query.tags_not) == ("%DIG%", {"team": "cv"}, {"x": "y"})
    assert (query.order_by, query.descending, query.limit, query.offset) == (ModelOrder.updated, True, 50, 10)
    assert model_query("name = 'a'", [], 1, 0).name_equals == "a"
    assert model_query(None, ["name"], 1, 0).order_by == ModelOrder.name


def test_version_query_maps_every_supported_clause() -> None:
    query = version_query("name = 'm' AND run_id = 'r' AND version_number = 2 AND source_path = 's3://b/k'", [], 5, 0)
    assert (query.name, query.run_id, query.version, query.source) == ("m", "r", 2, "s3://b/k")
    assert (query.order_by, query.descending) == (VersionOrder.version, True)
    assert version_query(None, ["creation_timestamp ASC"], 5, 0).order_by == VersionOrder.created


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("owner = 'x'", "unsupported filter clause owner = 'x'"),
        ("name > 'a'", "cannot parse filter"),
        ("name = ", "expected KEY OP VALUE"),
        ("name = 'a' OR name = 'b'", "joined by AND"),
        ("name = 'unterminated", "cannot parse filter"),
    ],
)
def test_unsupported_filters_say_what_is_supported(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        model_query(text, [], 10, 0)


@pytest.mark.parametrize("order_by", [["size ASC"], ["name SIDEWAYS"], ["name", "creation_timestamp"]])
def test_bad_order_by_is_refused(order_by: list[str]) -> None:
    with pytest.raises(InvalidRequest, match="order_by"):
        model_query(None, order_by, 10, 0)
