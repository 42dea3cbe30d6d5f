"""The monitor's settings from GALLERY_* variables: scrape targets, switched-off discovery, clear errors."""

from __future__ import annotations

import pytest

from gallery_common.settings import SettingsError, load_settings
from gallery_monitor.settings import MonitorSettings


def test_targets_are_a_comma_separated_list_and_an_empty_url_switches_discovery_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GALLERY_SCRAPE_TARGETS", "http://10.0.0.5:9001/, https://edge:443")
    monkeypatch.setenv("GALLERY_DEPLOYER_URL", "")
    settings = load_settings(MonitorSettings)
    assert settings.scrape_targets == ["http://10.0.0.5:9001", "https://edge:443"]
    assert settings.deployer_url is None and settings.gateway_url == "http://127.0.0.1:8080"
    assert (settings.port, settings.slo_p99_ms, settings.slo_window_s, settings.scrape_interval_s) == (8005, 100, 60, 5)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("GALLERY_SCRAPE_TARGETS", "10.0.0.5:9001", "invalid setting GALLERY_SCRAPE_TARGETS: not an http(s) URL"),
        ("GALLERY_SLO_ERROR_RATE", "2", "invalid setting GALLERY_SLO_ERROR_RATE"),
        ("GALLERY_SLO_WINDOW_S", "3600", "invalid setting GALLERY_SLO_WINDOW_S: must not exceed"),
        (
            "GALLERY_TEXT_DRIFT_PSI",
            "0.05",
            "invalid setting GALLERY_TEXT_DRIFT_PSI: must be above GALLERY_TEXT_WARN_PSI (0.1)",
        ),
    ],
)
def test_a_bad_value_names_its_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings(MonitorSettings)
    assert str(raised.value.code).startswith(message)
