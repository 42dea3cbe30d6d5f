"""Which NATS user `gallery events redeliver` puts a dead letter back as, and when it asks that user's
service to send it instead of timing out on a permission error."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from nats.js.api import RawStreamMsg

from gallery_cli.events_cmd import can_publish_as, publisher_for
from gallery_common.auth import Caller
from gallery_common.bus import DeadLetter
from gallery_common.consumer import CONSUMER_HEADER, MSG_ID_HEADER, ORIGINAL_SEQ_HEADER
from gallery_common.dead_letters_api import redelivery
from gallery_common.errors import InvalidRequest
from gallery_common.nats_auth import ensure_passwords
from gallery_common.settings import GallerySettings, Role


def letter(subject: str) -> DeadLetter:
    return DeadLetter(7, "dlq." + subject, "why", subject, "e-1", 1, "registry-gate", None, b"{}")


def test_a_letter_goes_back_as_the_user_that_owns_its_subject() -> None:
    assert publisher_for(letter("model.trained.team-a")) == "trainer"
    assert publisher_for(letter("model.validated.default")) == "registry"
    assert publisher_for(letter("model.usage.default")) == "gateway"


def test_a_subject_no_one_may_publish_is_refused() -> None:
    with pytest.raises(InvalidRequest, match=r"dead letter 7: jobs\.train\.x is not a lifecycle event's subject"):
        publisher_for(letter("jobs.train.x"))
    with pytest.raises(InvalidRequest, match="is not a lifecycle event's subject"):
        publisher_for(letter("model.trained"))  # a subject from before projects


def test_the_cli_sends_as_the_publisher_only_where_it_can(tmp_path: Path) -> None:
    assert can_publish_as(GallerySettings(home=tmp_path), "trainer")  # a stack without NATS users
    ensure_passwords(tmp_path, ["cli", "registry"])  # this machine holds the CLI's password, not the trainer's
    settings = GallerySettings(home=tmp_path)
    assert can_publish_as(settings, "registry")
    assert not can_publish_as(settings, "trainer")  # the trainer service is asked instead


def test_the_audit_record_of_a_put_back_names_the_model_only_when_the_payload_does() -> None:
    caller = Caller(name="ops", role=Role.admin)
    event = b'{"data": {"model": "iris", "version": 3}}'
    for data, named in ((event, ("iris", 3)), (b'{"data": "text"}', (None, None)), (b"[1]", (None, None))):
        change = redelivery(replace(letter("model.trained.default"), data=data), "default", caller)
        assert (change.model, change.version) == named
        assert change.target == "dead-letter/7" and change.after["redelivered_to"] == "registry-gate"


@pytest.mark.parametrize(
    ("headers", "seq"),
    [
        ({CONSUMER_HEADER: "registry-gate", ORIGINAL_SEQ_HEADER: "41", MSG_ID_HEADER: "registry-gate:40"}, 41),
        ({CONSUMER_HEADER: "registry-gate", MSG_ID_HEADER: "registry-gate:40"}, 40),  # a letter from before
        ({CONSUMER_HEADER: "registry-gate", MSG_ID_HEADER: "deployer:40"}, None),  # another consumer's id
        ({CONSUMER_HEADER: "registry-gate", ORIGINAL_SEQ_HEADER: "forty"}, None),
        ({ORIGINAL_SEQ_HEADER: "41"}, None),  # no consumer: nothing to give it back to anyway
    ],
)
def test_a_letter_names_the_stored_event_it_copies(headers: dict[str, str], seq: int | None) -> None:
    raw = RawStreamMsg(subject="dlq.model.trained.default", seq=3, data=b"{}", headers=headers)
    assert DeadLetter.from_raw(raw).original_seq == seq
