"""Site tokens: the trainer's list of admitted sites is read strictly, a connection is admitted only with a
listed site's own token and name, and a reason never names a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from gallery_common.site_tokens import (
    SITE_CERTIFICATE_ENV,
    SITE_PRIVATE_KEY_ENV,
    SiteTokensInvalid,
    admit_connection,
    admit_site,
    new_site_token,
    parse_site_tokens,
    site_metadata,
    token_digest,
)
from gallery_trainer.federated.relay import FederationError, coordinator_site_tokens
from gallery_trainer.federated.site import site_certificate, site_token


def test_the_list_is_name_and_sha256_pairs_and_a_bad_entry_is_named() -> None:
    one, two = new_site_token(), new_site_token()
    assert one != two and len(one) >= 43
    text = f" site-1:{token_digest(one)} , hospital_b:sha256:{token_digest(two).upper()},"
    assert parse_site_tokens(text) == {"site-1": token_digest(one), "hospital_b": token_digest(two)}
    for bad, says in (
        (f"site-1:{token_digest(one)},site 1:{token_digest(two)}", "entry 2: 'site 1' is not a site name"),
        ("site-1:abc", "site site-1's entry is not name:<64 hex digits"),
        (f"site-1:{token_digest(one)},site-1:{token_digest(two)}", "site site-1 is listed twice"),
        (one, "entry 1 is not name:<sha256 of the site's token>"),  # a token pasted in place of its entry
    ):
        with pytest.raises(SiteTokensInvalid, match=says) as refused:
            parse_site_tokens(bad)
        assert one not in str(refused.value), "a token is never echoed"


def test_a_connection_is_admitted_only_with_a_listed_sites_own_token_and_name() -> None:
    one, two = new_site_token(), new_site_token()
    listed = {"site-1": token_digest(one), "site-2": token_digest(two)}
    assert admit_site(listed, site_metadata("site-1", one)) == ("site-1", "")
    assert admit_site(listed, [(k, v.encode()) for k, v in site_metadata("site-2", two)]) == ("site-2", "")
    refusals = {
        "no token": admit_site(listed, [("gallery-site", "site-1")]),
        "not bearer": admit_site(listed, [("authorization", f"Basic {one}"), ("gallery-site", "site-1")]),
        "unlisted": admit_site(listed, site_metadata("site-3", one)),
        "another's": admit_site(listed, site_metadata("site-2", one)),
        "no name": admit_site(listed, [("authorization", f"Bearer {one}")]),
    }
    assert {case: site for case, (site, _) in refusals.items()} == dict.fromkeys(refusals)
    reasons = {case: reason for case, (_, reason) in refusals.items()}
    assert reasons["no token"].startswith("this federation admits only listed sites: connect with the site's token")
    assert reasons["not bearer"] == reasons["no token"]
    assert reasons["unlisted"] == "site site-3 is not one of this federation's sites"
    assert reasons["another's"] == "the token is not site site-2's"
    assert reasons["no name"] == "site (no name) is not one of this federation's sites"
    assert not any(one in reason or two in reason for reason in reasons.values())


def test_with_site_certificates_a_connection_is_the_site_its_certificate_names() -> None:
    """Mutual TLS: the certificate (checked by the handshake) names the site; a token, when the federation lists
    its sites, must be that site's; a common name that is no site name is refused naming it."""
    one = new_site_token()
    listed = {"site-1": token_digest(one), "site-2": token_digest(new_site_token())}
    assert admit_connection(None, (), "site-1") == ("site-1", "")
    assert admit_connection(None, (), None) == (None, "")  # no list, no certificates: any site
    assert admit_connection(listed, site_metadata("site-1", one), "site-1") == ("site-1", "")
    assert admit_connection(listed, site_metadata("site-1", one), "site-2") == (
        None,
        "its token is site site-1's but its certificate is site site-2's",
    )
    assert admit_connection(None, (), "hospital a.example.org") == (
        None,
        "its certificate's common name 'hospital a.example.org' is not a site name",
    )
    site, refusal = admit_connection(listed, (), "site-1")  # a listed federation still wants the token
    assert site is None and "connect with the site's token" in refusal


def test_the_trainer_reads_its_list_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GALLERY_FEDERATION_SITE_TOKENS", raising=False)
    assert coordinator_site_tokens() is None  # every site admitted, as before
    monkeypatch.setenv("GALLERY_FEDERATION_SITE_TOKENS", f"site-1:{token_digest('t')}")
    assert coordinator_site_tokens() == {"site-1": token_digest("t")}
    monkeypatch.setenv("GALLERY_FEDERATION_SITE_TOKENS", "site-1:nope")
    with pytest.raises(FederationError, match="GALLERY_FEDERATION_SITE_TOKENS: site site-1's entry"):
        coordinator_site_tokens()


def test_a_site_reads_its_token_from_its_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GALLERY_SITE_TOKEN", "from-env")
    assert site_token("site-1", None) == "from-env"
    path = tmp_path / "site-1.token"
    path.write_text("from-file\n")
    assert site_token("site-1", path) == "from-file"
    path.write_text("\n")
    with pytest.raises(FederationError, match="must hold the site's token on one line"):
        site_token("site-1", path)
    with pytest.raises(FederationError, match="cannot read its token file"):
        site_token("site-1", tmp_path / "missing.token")
    monkeypatch.delenv("GALLERY_SITE_TOKEN")
    assert site_token("site-1", None) is None


def test_a_site_takes_its_certificate_and_key_together_from_files_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    certificate, key = tmp_path / "site.pem", tmp_path / "site.key"
    certificate.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n")
    for name in (SITE_CERTIFICATE_ENV, SITE_PRIVATE_KEY_ENV):
        monkeypatch.delenv(name, raising=False)
    assert site_certificate("site-1", None, None) is None
    assert site_certificate("site-1", certificate, key) == (certificate.read_bytes(), key.read_bytes())
    with pytest.raises(FederationError, match="site site-1: a certificate and its private key go together"):
        site_certificate("site-1", certificate, None)
    monkeypatch.setenv(SITE_CERTIFICATE_ENV, certificate.read_text())  # the PEM itself, as Kubernetes gives it
    monkeypatch.setenv(SITE_PRIVATE_KEY_ENV, str(key))  # or its file
    assert site_certificate("site-1", None, None) == (certificate.read_bytes(), key.read_bytes())
    monkeypatch.setenv(SITE_PRIVATE_KEY_ENV, "not a key")
    with pytest.raises(FederationError, match="cannot read the site's certificate or key"):
        site_certificate("site-1", None, None)
    (tmp_path / "plain.txt").write_text("hello")
    monkeypatch.setenv(SITE_PRIVATE_KEY_ENV, str(tmp_path / "plain.txt"))
    with pytest.raises(FederationError, match="must be PEM"):
        site_certificate("site-1", None, None)
