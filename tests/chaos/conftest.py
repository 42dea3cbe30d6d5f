"""The chaos suite: real servers killed, stopped or starved while the services work (`make chaos`).

Each scenario records its figures with the `figures` fixture; they are printed at the end of the run
and written to `.gallery/chaos/<scenario>.json`, from which `scripts/chaos_table.py` makes the
README's table.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chaos_figures import Figures

REPO = Path(__file__).resolve().parents[2]
# the scenarios start services as processes the way the end-to-end tests do (tests/e2e/lifecycle_stack.py)
# and build models the way the gate's tests do (tests/integration/registry/onnx_builders.py)
sys.path[:0] = [str(REPO / "tests" / "e2e"), str(REPO / "tests" / "integration" / "registry")]
FIGURES_DIR = REPO / ".gallery" / "chaos"

_recorded: list[tuple[str, dict[str, Any]]] = []


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    """The scenario's figures, named after the test; written (with its outcome) even when it fails."""
    scenario = request.node.name.removeprefix("test_")
    found = Figures(scenario)
    yield found
    report = getattr(request.node, "chaos_report", None)
    passed = report is not None and report.passed
    record = {
        "scenario": scenario,
        "title": (request.node.function.__doc__ or scenario).strip().splitlines()[0],
        "passed": passed,
        "seconds": round(time.monotonic() - found.started, 1),
        "figures": dict(found),
    }
    FIGURES_DIR.mkdir(parents=True, exist_ok=True)
    (FIGURES_DIR / f"{scenario}.json").write_text(json.dumps(record, indent=2) + "\n")
    _recorded.append((scenario, record))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.when == "call":
        item.chaos_report = report  # type: ignore[attr-defined]
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _recorded:
        return
    terminalreporter.section("chaos figures")
    for scenario, record in _recorded:
        outcome = "passed" if record["passed"] else "FAILED"
        shown = ", ".join(f"{k}={v}" for k, v in record["figures"].items())
        terminalreporter.write_line(f"{scenario} ({outcome}, {record['seconds']} s): {shown}")
    terminalreporter.write_line(f"written to {FIGURES_DIR}")
