"""Model names as routes-bucket keys: one KV key (one subject token) per name, and back."""

from __future__ import annotations

import pytest
from nats.js.kv import VALID_KEY_RE

from gallery_common.errors import InvalidRequest
from gallery_common.routes_kv import model_of_key, route_key


@pytest.mark.parametrize("model", ["iris", "iris.v2", "a..b", "ends.with.dot.", "x-1_y.2", "9" * 128])
def test_every_model_name_is_one_valid_key_and_comes_back(model: str) -> None:
    key = route_key(model)
    assert VALID_KEY_RE.match(key) and "." not in key  # nats.py accepts it; NATS sees one token
    assert model_of_key(key) == model


def test_names_that_differ_only_in_dots_get_different_keys() -> None:
    assert len({route_key(m) for m in ("ab", "a.b", "a..b", "ab.")}) == 4


@pytest.mark.parametrize("model", ["", ".iris", "iris=v2", "a b", "x" * 129])
def test_a_name_that_is_no_model_name_is_refused(model: str) -> None:
    with pytest.raises(InvalidRequest, match="model name"):
        route_key(model)


@pytest.mark.parametrize("key", ["a.b", "=a", "bad key"])
def test_a_key_no_model_name_gives_is_not_read_as_one(key: str) -> None:
    assert model_of_key(key) is None
