"""The alerts in deploy/prometheus/rules.yml: promtool accepts them, each fires on the series that should
raise it and stays quiet on those that should not (prometheus_alerts_test.yml, `promtool test rules`), and
every alert is in that file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from promtool_check import Promtool

HERE = Path(__file__).resolve().parent
RULES = HERE.parents[2] / "deploy" / "prometheus" / "rules.yml"
ALERT_TESTS = HERE / "prometheus_alerts_test.yml"


def run(promtool: Promtool, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool.binary), *args], capture_output=True, text=True, timeout=120, cwd=HERE)


def test_promtool_accepts_the_rules(promtool: Promtool) -> None:
    checked = run(promtool, "check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_each_alert_fires_when_it_should_and_only_then(promtool: Promtool) -> None:
    tested = run(promtool, "test", "rules", ALERT_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_tested() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}
    cases = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    tested = {check["alertname"] for case in cases for check in case["alert_rule_test"] if check["exp_alerts"]}
    assert len(alerts) >= 7 and alerts == tested
