"""What identifying a caller costs per request: a static token, an OIDC token already verified (the
cache by the token's hash), and an OIDC token's first signature check (RS256 and ES256).

In-process, no HTTP: `gallery_common.auth.identify` as the access middleware and the gateway's
inference path call it, with the issuer's keys already fetched (a fake issuer serves them here).

    .venv/bin/python bench/identify.py [--rounds 20000]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gallery_common.auth import identify
from gallery_common.oidc import TokenVerifier
from gallery_common.settings import GallerySettings, load_settings

ISSUER = "https://login.bench.test"
AUDIENCE = "model-gallery"


def fake_issuer(keys: dict[str, Any]) -> Callable[[str], Mapping[str, Any]]:
    def fetch(url: str) -> Mapping[str, Any]:
        if url.endswith("/.well-known/openid-configuration"):
            return {"issuer": ISSUER, "jwks_uri": ISSUER + "/keys"}
        published = []
        for kid, key in keys.items():
            kind = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
            published.append({**json.loads(kind.to_jwk(key.public_key())), "kid": kid, "use": "sig"})
        return {"keys": published}

    return fetch


def token(key: Any, kid: str, alg: str, n: int) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": f"app-{n}", "iat": now, "exp": now + 3600, "groups": ["apps"]}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def per_call_us(call: Callable[[], object], rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        call()
    return (time.perf_counter() - started) / rounds * 1e6


def settings_with(keys: dict[str, Any]) -> GallerySettings:
    settings = load_settings(
        GallerySettings,
        api_tokens="static-token:inference",
        oidc_issuer=ISSUER,
        oidc_audience=AUDIENCE,
        oidc_group_roles="apps=inference",
    )
    config = settings.token_verifier().config  # type: ignore[union-attr]
    settings._token_verifier = TokenVerifier(config, fake_issuer(keys))
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20_000)
    args = parser.parse_args()
    keys = {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
    }
    settings = settings_with(keys)
    identify(settings, "Bearer " + token(keys["rsa"], "rsa", "RS256", 0))  # fetch the keys once
    cached = "Bearer " + token(keys["rsa"], "rsa", "RS256", 1)
    identify(settings, cached)
    first_rounds = max(200, args.rounds // 50)
    rs256 = ["Bearer " + token(keys["rsa"], "rsa", "RS256", n) for n in range(first_rounds)]
    es256 = ["Bearer " + token(keys["ec"], "ec", "ES256", n) for n in range(first_rounds)]
    rs_iter, es_iter = iter(rs256), iter(es256)
    rows = [
        ("static token", per_call_us(lambda: identify(settings, "Bearer static-token"), args.rounds)),
        ("OIDC, verified before (cache)", per_call_us(lambda: identify(settings, cached), args.rounds)),
        ("OIDC RS256, first time (signature)", per_call_us(lambda: identify(settings, next(rs_iter)), first_rounds)),
        ("OIDC ES256, first time (signature)", per_call_us(lambda: identify(settings, next(es_iter)), first_rounds)),
    ]
    print(f"{'caller identified by':<38} {'µs per call':>12}")
    for name, micros in rows:
        print(f"{name:<38} {micros:>12.1f}")


if __name__ == "__main__":
    main()
