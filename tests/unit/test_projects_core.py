"""Projects: a caller's role in a project, and the one answer for a project it cannot see."""

from __future__ import annotations

import pytest

from gallery_common.auth import identify
from gallery_common.errors import Forbidden, InvalidRequest, NotFound
from gallery_common.projects import (
    DEFAULT_PROJECT,
    ProjectDirectory,
    ProjectRecord,
    authorize_in,
    visible_projects,
)
from gallery_common.settings import GallerySettings, Role


def settings_with(tokens: str, *projects: ProjectRecord) -> GallerySettings:
    settings = GallerySettings(api_tokens=tokens)
    for record in projects:
        settings.project_directory().put(record)
    return settings


ALPHA = ProjectRecord.new("alpha", "team A", "admin-1", {})
BETA = ProjectRecord.new("beta", "team B", "admin-1", {"token-b": Role.reader})


def test_an_installation_wide_role_holds_in_every_project_that_exists() -> None:
    settings = settings_with("root:admin", ALPHA, BETA)
    root = identify(settings, "Bearer root")
    directory = settings.project_directory()
    assert visible_projects(root, directory) == ["alpha", "beta", DEFAULT_PROJECT]
    assert authorize_in(root, "beta", Role.admin, directory) is Role.admin
    with pytest.raises(NotFound, match="project 'gamma' not found"):
        authorize_in(root, "gamma", Role.reader, directory)


def test_a_project_token_sees_its_project_and_nothing_else_and_cannot_tell_hidden_from_missing() -> None:
    settings = settings_with("a:alpha:writer", ALPHA, BETA)
    member = identify(settings, "Bearer a")
    directory = settings.project_directory()
    assert visible_projects(member, directory) == ["alpha"]
    assert authorize_in(member, "alpha", Role.writer, directory) is Role.writer
    with pytest.raises(Forbidden, match="admin role in project 'alpha'"):
        authorize_in(member, "alpha", Role.admin, directory)
    with pytest.raises(NotFound) as hidden_error:
        authorize_in(member, "beta", Role.reader, directory)
    hidden = hidden_error.value.message.replace("beta", "X")
    with pytest.raises(NotFound) as missing_error:
        authorize_in(member, "gamma", Role.reader, directory)
    missing = missing_error.value.message.replace("gamma", "X")
    assert hidden == missing
    with pytest.raises(NotFound):  # not a member of default either
        authorize_in(member, DEFAULT_PROJECT, Role.reader, directory)


def test_members_by_name_and_by_group_are_folded_into_the_caller_and_follow_changes() -> None:
    settings = GallerySettings(api_tokens="b:beta:inference")
    directory = settings.project_directory()
    directory.put(BETA)
    caller = identify(settings, "Bearer b")
    assert caller.name == "token-" + caller.name.split("-")[1]
    directory.put(BETA.with_member(caller.name, Role.writer))
    assert identify(settings, "Bearer b").role_in("beta") is Role.writer
    directory.put(ALPHA.with_member("group:ml", Role.reader))
    assert directory.memberships("oidc:zoe", ["ml"]) == {"alpha": Role.reader}
    directory.put(ALPHA.with_member("group:/ml/team-a", Role.writer))  # Keycloak's full group paths
    assert directory.memberships("oidc:zoe", ["/ml/team-a"]) == {"alpha": Role.writer}
    directory.remove("beta")
    with pytest.raises(NotFound):
        authorize_in(identify(settings, "Bearer b"), "beta", Role.reader, directory)


def test_a_project_record_round_trips_and_refuses_a_bad_name() -> None:
    record = BETA.with_member("oidc:zoe", Role.admin)
    assert ProjectRecord.from_json(record.to_json()) == record
    with pytest.raises(InvalidRequest, match="project name"):
        ProjectRecord.new("Team B", "", "x", {})
    assert ProjectDirectory().names() == [DEFAULT_PROJECT]
