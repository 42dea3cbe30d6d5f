"""The gateway's routes snapshot: the table with the bucket revision it holds, and older files."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from gallery_deployer.gateway.routes import Backend, ModelRoute, RouteBook

ROUTE = ModelRoute(backends=[Backend(id="a", url="http://10.0.0.1:8500", version="1")])


def test_changes_from_the_bucket_survive_a_restart_with_their_revision(tmp_path: Path) -> None:
    book = RouteBook(tmp_path / "routes.json")
    book.apply({"iris.v2": ROUTE, "old": ROUTE}, revision=7)
    book.apply({"old": None}, revision=8)
    book.persist()
    again = RouteBook(tmp_path / "routes.json").load()
    assert again.revision == 8 and again.all() == {"iris.v2": ROUTE}


def test_a_revision_never_goes_back(tmp_path: Path) -> None:
    book = RouteBook(tmp_path / "routes.json")
    book.apply({"m": ROUTE}, revision=5)
    book.apply({"m": None}, revision=3)  # a replayed older change moves the table, not the revision
    assert book.revision == 5 and book.get("m") is None


def test_a_snapshot_written_before_the_bucket_is_read_as_revision_0(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    path.write_bytes(orjson.dumps({"iris": ROUTE.model_dump(mode="json")}))
    book = RouteBook(path).load()
    assert book.revision == 0 and book.get("iris") == ROUTE


@pytest.mark.parametrize("content", [b"[]", b'{"iris": 3}', b"{not json"])
def test_a_damaged_snapshot_stops_start_up_with_its_path(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "routes.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"routes\.json is not valid"):
        RouteBook(path).load()


def test_a_route_stored_before_record_outcomes_existed_loads_and_records_nothing(tmp_path: Path) -> None:
    stored = ROUTE.model_dump(mode="json")
    del stored["policy"]["record_outcomes"]
    path = tmp_path / "routes.json"
    path.write_bytes(orjson.dumps({"revision": 4, "routes": {"iris": stored}}))
    route = RouteBook(path).load().get("iris")
    assert route is not None and route.policy.record_outcomes is False
    assert ModelRoute.model_validate_json(orjson.dumps(stored)).policy.record_outcomes is False
