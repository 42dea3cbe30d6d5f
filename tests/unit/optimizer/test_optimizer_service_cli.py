"""`gallery optimize`: the NAME:VERSION argument and the report table."""

from __future__ import annotations

from rich.console import Console
from typer.testing import CliRunner

from gallery_cli.main import app
from gallery_cli.optimize_cmd import report_table

REPORT = {
    "model": "iris",
    "version": 3,
    "recommended": "int8_dynamic",
    "recommendation_reason": "fastest at batch 32",
    "variants": [
        {"name": "fp32", "size_bytes": 4096, "latency_b32_p50_ms": 1.5, "accuracy": 0.9, "accuracy_delta": 0.0},
        {
            "name": "int8_dynamic",
            "size_bytes": 1024,
            "latency_b32_p50_ms": 0.5,
            "accuracy": 0.895,
            "accuracy_delta": -0.005,
            "within_budget": True,
        },
        {"name": "distilled", "error": "no weights artifact"},
    ],
}


def test_a_bad_reference_exits_2_saying_what_is_expected() -> None:
    for ref in ("iris", "iris:latest", "iris:0", ":3"):
        result = CliRunner().invoke(app, ["optimize", ref])
        assert result.exit_code == 2, ref
        assert "expected NAME:VERSION with a version number >= 1" in result.output


def test_an_unreachable_optimizer_is_one_line_naming_the_setting() -> None:
    result = CliRunner(env={"GALLERY_OPTIMIZER_URL": "http://127.0.0.1:9"}).invoke(app, ["optimize", "iris:3"])
    assert result.exit_code == 1
    assert "cannot reach the optimizer at http://127.0.0.1:9" in result.output
    assert "GALLERY_OPTIMIZER_URL" in result.output


def test_the_report_table_stars_the_recommended_variant_and_marks_failures() -> None:
    console = Console(width=200, record=True)
    console.print(report_table(REPORT))
    text = console.export_text()
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") > 3}
    assert "int8_dynamic ★" in rows
    assert "1.0 KiB" in rows["int8_dynamic ★"] and "-0.50 pt" in rows["int8_dynamic ★"]
    assert "89.50%" in rows["int8_dynamic ★"] and "yes" in rows["int8_dynamic ★"]
    assert "failed" in rows["distilled"]


def test_a_regressors_report_table_reads_in_r2_and_rmse() -> None:
    report = {
        "model": "friedman",
        "version": 1,
        "task": "regression",
        "recommended": "distilled",
        "variants": [
            {"name": "fp32", "size_bytes": 73728, "r2": 0.9721, "rmse": 0.8603, "r2_delta": 0.0, "accuracy": None},
            {"name": "distilled", "size_bytes": 4300, "r2": 0.9773, "rmse": 0.776, "r2_delta": 0.0052},
        ],
    }
    console = Console(width=200, record=True)
    console.print(report_table(report))
    text = console.export_text()
    header = next(line for line in text.splitlines() if "in budget" in line)
    assert "r2" in header and "rmse" in header and "accuracy" not in header
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") > 3}
    assert "0.9773" in rows["distilled ★"] and "0.7760" in rows["distilled ★"] and "+0.52 pt" in rows["distilled ★"]
