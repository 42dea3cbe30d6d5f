"""How the registry picks a new version's SemVer string."""

from __future__ import annotations

import pytest

from gallery_common.errors import InvalidRequest
from gallery_common.events import Signature, TensorSpec
from gallery_registry.semver_rules import next_semver, parse_semver, signature_changed


def sig(features: int, datatype: str = "FP32") -> Signature:
    return Signature(
        inputs=[TensorSpec(name="features", datatype=datatype, shape=[-1, features])],
        outputs=[TensorSpec(name="logits", datatype="FP32", shape=[-1, 10])],
    )


def test_first_version_is_1_0_0() -> None:
    assert next_semver(None, None, sig(4)) == "1.0.0"
    assert next_semver(None, None, None) == "1.0.0"


@pytest.mark.parametrize(
    ("latest", "previous", "new", "expected"),
    [
        ("1.0.0", sig(4), sig(4), "1.1.0"),  # retrain, same signature
        ("1.4.2", sig(4), sig(4), "1.5.0"),  # the patch resets
        ("1.4.2", sig(4), sig(8), "2.0.0"),  # new input shape
        ("1.4.2", sig(4), sig(4, "FP16"), "2.0.0"),  # new datatype
        ("1.4.2", None, sig(4), "2.0.0"),  # a signature where there was none
        ("1.4.2", sig(4), None, "1.5.0"),  # none given says nothing new
        ("2.0.0-rc.1", sig(4), sig(4), "2.1.0"),
    ],
)
def test_signature_decides_major_or_minor(
    latest: str, previous: Signature | None, new: Signature | None, expected: str
) -> None:
    assert next_semver(latest, previous, new) == expected


def test_explicit_semver_must_be_greater_than_the_latest() -> None:
    assert next_semver("1.2.0", sig(4), sig(8), requested="1.2.1") == "1.2.1"  # the caller's choice wins
    assert next_semver("1.2.0", None, None, requested="1.3.0-beta.1") == "1.3.0-beta.1"
    assert next_semver(None, None, None, requested="0.1.0") == "0.1.0"
    with pytest.raises(InvalidRequest, match=r"semver 1\.2\.0 must be greater than the latest version's 1\.2\.0"):
        next_semver("1.2.0", None, None, requested="1.2.0")
    with pytest.raises(InvalidRequest, match="must be greater"):
        next_semver("1.2.0", None, None, requested="1.2.0-rc.1")  # a pre-release sorts before its release
    with pytest.raises(InvalidRequest, match=r"must be greater than 0\.0\.0"):
        next_semver(None, None, None, requested="0.0.0")


@pytest.mark.parametrize("text", ["1.0", "v1.0.0", "1.0.0.0", "01.0.0", "latest", ""])
def test_invalid_semver_is_refused_with_the_rule(text: str) -> None:
    with pytest.raises(InvalidRequest, match=r"not a valid semantic version: expected MAJOR\.MINOR\.PATCH"):
        parse_semver(text)


def test_signature_changed_compares_whole_tensors() -> None:
    assert not signature_changed(sig(4), sig(4))
    assert signature_changed(sig(4), sig(5))
    assert not signature_changed(sig(4), None)
    assert signature_changed(None, sig(4))
