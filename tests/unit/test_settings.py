from pathlib import Path

import pytest

from gallery_common.settings import GallerySettings, Role, SettingsError, load_settings


def test_defaults_put_state_under_gallery_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GALLERY_HOME", str(tmp_path))
    settings = load_settings(GallerySettings, service_name="registry")
    assert settings.resolved_database_url == f"sqlite:///{tmp_path}/registry.db"
    assert settings.resolved_artifact_root == (tmp_path / "artifacts").as_uri()
    assert settings.nats_url == "nats://127.0.0.1:4222"
    assert not settings.auth_enabled


def test_tokens_parse_into_roles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALLERY_API_TOKENS", "s3cr3t:admin, r34d:reader, t34m:alpha:writer, t34m:beta:reader")
    settings = load_settings(GallerySettings)
    assert settings.token_grants() == {
        "s3cr3t": (Role.admin, {}),
        "r34d": (Role.reader, {}),
        "t34m": (None, {"alpha": Role.writer, "beta": Role.reader}),
    }
    assert settings.auth_enabled


@pytest.mark.parametrize(
    ("tokens", "says"),
    [("s3cr3t", "expected token:role"), ("s3cr3t:boss", "unknown role 'boss'"), ("t:Team A:reader", "project name")],
)
def test_a_token_with_a_bad_grant_names_what_is_wrong(tokens: str, says: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALLERY_API_TOKENS", tokens)
    with pytest.raises(SettingsError, match=says):
        load_settings(GallerySettings)


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("GALLERY_PORT", "99999", "GALLERY_PORT"),
        ("GALLERY_NATS_URL", "http://localhost:4222", "not a NATS URL"),
        ("GALLERY_ARTIFACT_ROOT", "ftp://x", "file:// or s3://"),
        ("GALLERY_API_TOKENS", "tok:superuser", "GALLERY_API_TOKENS"),
        ("GALLERY_API_TOKENS", "no-role-here", "token:role"),
        ("GALLERY_LOG_LEVEL", "LOUD", "GALLERY_LOG_LEVEL"),
    ],
)
def test_invalid_setting_stops_with_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as err:
        load_settings(GallerySettings)
    message = str(err.value.code)
    assert message.startswith(f"invalid setting {variable}:")
    assert says in message
    assert "\n" not in message


def test_without_tokens_a_service_stays_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALLERY_HOST", "0.0.0.0")
    assert load_settings(GallerySettings).bind_host == "127.0.0.1"
    monkeypatch.setenv("GALLERY_API_TOKENS", "t:writer")
    assert load_settings(GallerySettings).bind_host == "0.0.0.0"
