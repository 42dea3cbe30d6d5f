"""Which NATS user `gallery events redeliver` puts a dead letter back as, and when it refuses instead of
timing out on a permission error."""

from __future__ import annotations

from pathlib import Path

import pytest

from gallery_cli.events_cmd import publisher_for
from gallery_common.bus import DeadLetter
from gallery_common.errors import InvalidRequest
from gallery_common.nats_auth import ensure_passwords
from gallery_common.settings import GallerySettings


def letter(subject: str) -> DeadLetter:
    return DeadLetter(7, "dlq." + subject, "why", subject, "e-1", 1, "registry-gate", None, b"{}")


def test_a_letter_goes_back_as_the_user_that_owns_its_subject(tmp_path: Path) -> None:
    settings = GallerySettings(home=tmp_path)  # a stack without NATS users: no credentials at all
    assert publisher_for(letter("model.trained.team-a"), settings) == "trainer"
    assert publisher_for(letter("model.validated.default"), settings) == "registry"
    assert publisher_for(letter("model.usage.default"), settings) == "gateway"


def test_a_subject_no_one_may_publish_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match=r"dead letter 7: jobs\.train\.x is not a lifecycle event's subject"):
        publisher_for(letter("jobs.train.x"), GallerySettings(home=tmp_path))


def test_on_a_secured_stack_without_the_publishers_password_it_says_so(tmp_path: Path) -> None:
    ensure_passwords(tmp_path, ["cli", "registry"])  # this machine holds the CLI's password, not the trainer's
    settings = GallerySettings(home=tmp_path)
    assert publisher_for(letter("model.validated.default"), settings) == "registry"
    with pytest.raises(InvalidRequest, match="no NATS credentials of the trainer"):
        publisher_for(letter("model.trained.default"), settings)
