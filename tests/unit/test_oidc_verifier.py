"""OIDC bearer-token verification: what a caller with a good, stale, foreign or forged token gets.

The issuer here is a fake of the verifier's one outside interface (fetching a JSON document); the
tokens are real JWTs signed with keys generated per test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gallery_common.auth import identify
from gallery_common.errors import Forbidden, Unauthorized
from gallery_common.oidc import GroupRoles, OidcConfig, RoleGrant, TokenVerifier
from gallery_common.settings import GallerySettings, Role, SettingsError, load_settings

ISSUER = "https://login.example.test/realms/ml"
AUDIENCE = "model-gallery"


class FakeIssuer:
    """An issuer's discovery document and JWKS, with the keys it signs with; counts fetches."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.fetches: list[str] = []
        self.add_rsa_key("k1")

    def add_rsa_key(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def add_ec_key(self, kid: str) -> None:
        self.keys[kid] = ec.generate_private_key(ec.SECP256R1())

    def fetch(self, url: str) -> Mapping[str, Any]:
        self.fetches.append(url)
        if url == ISSUER + "/.well-known/openid-configuration":
            return {"issuer": ISSUER, "jwks_uri": ISSUER + "/keys"}
        assert url == ISSUER + "/keys"
        keys = []
        for kid, key in self.keys.items():
            algorithm = (
                jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
            )
            jwk = json.loads(algorithm.to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig"})
        return {"keys": keys}

    def token(self, kid: str = "k1", alg: str = "RS256", **overrides: Any) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "f3a1c2",
            "preferred_username": "alice",
            "iat": now,
            "exp": now + 300,
            "groups": ["gallery-readers"],
            **overrides,
        }
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.keys[kid], algorithm=alg, headers={"kid": kid})


def verifier(issuer: FakeIssuer, **config: Any) -> TokenVerifier:
    roles = GroupRoles(
        {
            "gallery-readers": (RoleGrant(Role.reader),),
            "gallery-admins": (RoleGrant(Role.admin),),
            "team-a": (RoleGrant(Role.writer, project="team-a"),),
        }
    )
    return TokenVerifier(OidcConfig(issuer=ISSUER, audience=AUDIENCE, group_roles=roles, **config), issuer.fetch)


def refusal(check: TokenVerifier, token: str) -> str:
    with pytest.raises(Unauthorized) as caught:
        check.verify(token)
    assert token not in caught.value.message
    return caught.value.message


@pytest.fixture
def issuer() -> FakeIssuer:
    return FakeIssuer()


def test_a_good_token_names_the_caller_and_grants_its_groups_roles(issuer: FakeIssuer) -> None:
    verified = verifier(issuer).verify(issuer.token(groups=["gallery-readers", "team-a", "unrelated"]))
    assert verified.name == "oidc:f3a1c2"
    assert verified.role is Role.reader
    assert verified.projects == {"team-a": Role.writer}


def test_the_name_claim_can_be_preferred_username(issuer: FakeIssuer) -> None:
    assert verifier(issuer, name_claim="preferred_username").verify(issuer.token()).name == "oidc:alice"


def test_an_es256_token_verifies(issuer: FakeIssuer) -> None:
    issuer.add_ec_key("ec1")
    assert verifier(issuer).verify(issuer.token(kid="ec1", alg="ES256")).role is Role.reader


def test_an_expired_token_is_refused_with_the_reason(issuer: FakeIssuer) -> None:
    now = int(time.time())
    message = refusal(verifier(issuer), issuer.token(iat=now - 900, exp=now - 120))
    assert "expired" in message


def test_expiry_within_the_clock_skew_still_passes(issuer: FakeIssuer) -> None:
    now = int(time.time())
    assert verifier(issuer).verify(issuer.token(iat=now - 900, exp=now - 20)).role is Role.reader
    refusal(verifier(issuer, clock_skew_s=0), issuer.token(iat=now - 900, exp=now - 20))


def test_a_token_not_yet_valid_is_refused(issuer: FakeIssuer) -> None:
    now = int(time.time())
    assert "not yet valid" in refusal(verifier(issuer), issuer.token(nbf=now + 600))
    assert "not yet valid" in refusal(verifier(issuer), issuer.token(iat=now + 600, exp=now + 1200))
    # a clock 30 s ahead at the issuer is within the default 60 s skew
    assert verifier(issuer).verify(issuer.token(iat=now + 30, nbf=now + 30)).role is Role.reader


def test_wrong_audience_and_wrong_issuer_are_refused(issuer: FakeIssuer) -> None:
    assert "wrong audience" in refusal(verifier(issuer), issuer.token(aud="another-app"))
    assert "wrong issuer" in refusal(verifier(issuer), issuer.token(iss="https://evil.example.test"))


def test_a_token_without_exp_is_refused(issuer: FakeIssuer) -> None:
    assert "exp" in refusal(verifier(issuer), issuer.token(exp=None))


def test_alg_none_is_refused(issuer: FakeIssuer) -> None:
    claims = jwt.decode(issuer.token(), options={"verify_signature": False})
    unsigned = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]
    assert "'none' is not accepted" in refusal(verifier(issuer), unsigned)


def test_hs256_signed_with_the_public_key_is_refused(issuer: FakeIssuer) -> None:
    # the classic confusion attack: an HMAC keyed with the issuer's (public) key
    public_pem = (
        issuer.keys["k1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": "k1", "typ": "JWT"}).encode()).rstrip(b"=")
    claims = jwt.decode(issuer.token(groups=["gallery-admins"]), options={"verify_signature": False})
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")

    signature = base64.urlsafe_b64encode(hmac.new(public_pem, header + b"." + body, hashlib.sha256).digest()).rstrip(
        b"="
    )
    forged = (header + b"." + body + b"." + signature).decode()
    assert "'HS256' is not accepted" in refusal(verifier(issuer), forged)
    # and configuring HS256 is refused at start-up
    with pytest.raises(ValueError, match="HS256"):
        TokenVerifier(OidcConfig(issuer=ISSUER, audience=AUDIENCE, algorithms=("HS256",)), issuer.fetch)


def test_a_token_signed_by_another_key_with_a_known_kid_has_a_bad_signature(issuer: FakeIssuer) -> None:
    check = verifier(issuer)
    check.verify(issuer.token())
    issuer.keys["k1"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # not published: fetched once
    assert "bad signature" in refusal(check, issuer.token(sub="mallory"))


def test_an_unknown_kid_refreshes_the_keys_once(issuer: FakeIssuer) -> None:
    check = verifier(issuer)
    check.verify(issuer.token())
    fetched = len(issuer.fetches)
    issuer.add_rsa_key("k2")  # the issuer rotated its key
    assert check.verify(issuer.token(kid="k2")).role is Role.reader
    assert len(issuer.fetches) == fetched + 2  # discovery and JWKS again, once


def test_a_flood_of_unknown_kids_fetches_at_most_once_per_interval(issuer: FakeIssuer) -> None:
    check = verifier(issuer, refresh_interval_s=3600)
    check.verify(issuer.token())
    for n in range(20):
        issuer.add_rsa_key(f"made-up-{n}")
        token = issuer.token(kid=f"made-up-{n}")
        del issuer.keys[f"made-up-{n}"]
        assert "unknown signing key" in refusal(check, token)
    assert len(issuer.fetches) == 4  # the first fetch and one refresh, two documents each


def test_a_verified_token_is_served_from_the_cache_until_it_expires(issuer: FakeIssuer) -> None:
    now = [time.time()]
    check = TokenVerifier(
        OidcConfig(issuer=ISSUER, audience=AUDIENCE, clock_skew_s=0, group_roles=verifier(issuer).config.group_roles),
        issuer.fetch,
        clock=lambda: now[0],
    )
    token = issuer.token(exp=int(now[0]) + 100)
    check.verify(token)
    issuer.keys.clear()  # the issuer and the verifier forget the key: nothing could verify it again
    check.keys._keys.clear()
    assert check.verify(token).name == "oidc:f3a1c2"  # only the cache answers
    now[0] += 101
    assert "unknown signing key" in refusal(check, token)  # past its exp the cache lets go


def test_groups_granting_no_role_anywhere_are_forbidden_naming_the_groups(issuer: FakeIssuer) -> None:
    settings = GallerySettings(
        oidc_issuer=ISSUER, oidc_audience=AUDIENCE, oidc_group_roles="team-a=alpha:writer", api_tokens="s3rv1ce:writer"
    )
    settings._token_verifier = TokenVerifier(settings.token_verifier().config, issuer.fetch)  # type: ignore[union-attr]
    with pytest.raises(Forbidden, match="lunch-club"):
        identify(settings, "Bearer " + issuer.token(groups=["lunch-club"]))
    member = identify(settings, "Bearer " + issuer.token(groups=["team-a", "lunch-club"]))
    assert member.role is None and dict(member.projects) == {"alpha": Role.writer}
    assert member.groups == ("team-a", "lunch-club")


def test_discovery_naming_another_issuer_is_refused(issuer: FakeIssuer) -> None:
    def lying(url: str) -> Mapping[str, Any]:
        return {"issuer": "https://elsewhere.test", "jwks_uri": ISSUER + "/keys"}

    check = TokenVerifier(OidcConfig(issuer=ISSUER, audience=AUDIENCE), lying)
    with pytest.raises(Unauthorized, match="discovery document names issuer"):
        check.verify(issuer.token())


def test_identify_accepts_static_tokens_and_oidc_tokens_side_by_side(issuer: FakeIssuer) -> None:
    settings = load_settings(
        GallerySettings,
        api_tokens="s3rv1ce:writer",
        oidc_issuer=ISSUER,
        oidc_audience=AUDIENCE,
        oidc_group_roles="gallery-readers=reader,gallery-admins=admin,team-a=team-a:writer",
    )
    settings._token_verifier = TokenVerifier(settings.token_verifier().config, issuer.fetch)  # type: ignore[union-attr]
    assert identify(settings, "Bearer s3rv1ce").role is Role.writer
    admin = identify(settings, "Bearer " + issuer.token(groups=["gallery-admins", "team-a"]))
    assert (admin.name, admin.role, dict(admin.projects)) == ("oidc:f3a1c2", Role.admin, {"team-a": Role.writer})
    with pytest.raises(Unauthorized, match="unknown bearer token"):
        identify(settings, "Bearer not-a-jwt")


def test_settings_refuse_unsafe_algorithms_and_a_missing_audience() -> None:
    with pytest.raises(SettingsError, match="GALLERY_OIDC_ALGORITHMS: HS256"):
        load_settings(GallerySettings, oidc_issuer=ISSUER, oidc_audience=AUDIENCE, oidc_algorithms="RS256,HS256")
    with pytest.raises(SettingsError, match="none cannot"):
        load_settings(GallerySettings, oidc_issuer=ISSUER, oidc_audience=AUDIENCE, oidc_algorithms="none")
    with pytest.raises(SettingsError, match="GALLERY_OIDC_AUDIENCE is required"):
        load_settings(GallerySettings, oidc_issuer=ISSUER)
    with pytest.raises(SettingsError, match=r"group 'ops'.*unknown role 'boss'"):
        load_settings(GallerySettings, oidc_issuer=ISSUER, oidc_audience=AUDIENCE, oidc_group_roles="ops=boss")


def test_prefetch_fetches_the_keys_before_the_first_token(issuer: FakeIssuer) -> None:
    check = verifier(issuer)
    check.prefetch()
    assert check.keys._background is not None
    check.keys._background.join(timeout=10)
    assert len(issuer.fetches) == 2
    assert check.verify(issuer.token()).role is Role.reader
    assert len(issuer.fetches) == 2  # the first token found the keys there


def test_an_unreachable_issuer_is_asked_at_most_once_per_interval(issuer: FakeIssuer) -> None:
    calls: list[str] = []

    def down(url: str) -> Mapping[str, Any]:
        calls.append(url)
        raise httpx.ConnectError("connection refused")

    check = TokenVerifier(OidcConfig(issuer=ISSUER, audience=AUDIENCE, refresh_interval_s=3600), down)
    for _ in range(10):
        assert "cannot fetch the issuer's signing keys: connection refused" in refusal(check, issuer.token())
    assert len(calls) == 1
