"""`gallery usage` against the deployer's usage API (served on loopback over a SQLite store): the table, CSV
and JSON a user reads, and a bad period refused with the deployer's reason."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner
from uvicorn_thread import running

from gallery_cli.main import app as cli
from gallery_common.app import create_app
from gallery_common.events import ModelUsage, UsageTally
from gallery_common.settings import GallerySettings
from gallery_deployer.deployer.migrations import upgrade as upgrade_deployments
from gallery_deployer.usage import api as usage_api
from gallery_deployer.usage.migrations import upgrade
from gallery_deployer.usage.records import UsageStore

READER = "cli-usage-reader"


@pytest.fixture(scope="module")
def deployer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home: Path = tmp_path_factory.mktemp("deployer")
    settings = GallerySettings(home=home, service_name="deployer", api_tokens=f"{READER}:reader")  # type: ignore[arg-type]
    app = create_app(settings, title="usage", routers=[usage_api.router], use_bus=False, use_database=True)
    with running(app, ready_path="/healthz") as server:
        engine = app.state.resources.engine
        upgrade_deployments(engine)  # a model's project comes from its deployments, in the same database
        upgrade(engine)
        store = UsageStore(engine)
        minute = datetime.now(UTC) - timedelta(minutes=30)
        tallies = [
            UsageTally(version="2", caller="inference-aaaa1111", requests=7, rows=70, compute_seconds=0.5),
            UsageTally(version="2", caller="inference-bbbb2222", requests=3, rows=96, compute_seconds=1.25),
        ]
        store.apply("usage.r.0.iris", ModelUsage(model="iris", replica="r", sequence=0, minute=minute, tallies=tallies))
        yield f"http://127.0.0.1:{server.config.port}"


def gallery(deployer: str, *args: str) -> tuple[int, str]:
    """`gallery usage ARGS`: its exit code and what it printed (stdout, or the error on stderr)."""
    # COLUMNS: a caller's name whole in the table, as on a wide terminal
    env = {"GALLERY_DEPLOYER_URL": deployer, "GALLERY_TOKEN": READER, "COLUMNS": "160"}
    result = CliRunner().invoke(cli, ["usage", *args], env=env)
    return result.exit_code, result.stdout if result.exit_code == 0 else result.stderr


def test_the_table_shows_each_caller_and_the_totals(deployer: str) -> None:
    code, output = gallery(deployer, "--since", "24h", "--period", "day")
    assert code == 0, output
    assert "inference-aaaa1111" in output and "inference-bbbb2222" in output
    total = next(line for line in output.splitlines() if "total" in line)
    assert [cell for cell in total.split() if cell.strip("│|")] == ["total", "10", "166", "1.750"]


def test_csv_and_json_carry_the_same_figures(deployer: str) -> None:
    code, text = gallery(deployer, "--since", "2h", "--format", "csv", "--caller", "inference-bbbb2222")
    assert code == 0, text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["model"], r["version"], r["requests"], r["rows"]) for r in rows] == [("iris", "2", "3", "96")]
    code, text = gallery(deployer, "--since", "2h", "--format", "json")
    assert code == 0, text
    assert orjson.loads(text)["totals"] == {"requests": 10, "rows": 166, "compute_seconds": 1.75}


def test_a_bad_period_or_format_says_why(deployer: str) -> None:
    code, output = gallery(deployer, "--period", "week")
    assert code != 0 and "422" in output and "period='week' is not one of: hour, day" in output
    code, output = gallery(deployer, "--format", "xml")
    assert code != 0 and "--format 'xml' is not one of: table, csv, json" in output
