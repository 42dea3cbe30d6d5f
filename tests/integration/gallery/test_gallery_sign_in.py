"""The Gallery's sign-in over HTTP, as a browser and as an attacker's page would use it: the cookies it
sets, a callback it did not start, a redirect off-site, and writes from another origin."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import nats
import pytest
from gallery_fakes import Scene, Stack, gallery_stack
from nats.js.errors import NoKeysError
from oidc_provider import RunningProvider, running_provider
from uvicorn_thread import served

from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port
from gallery_common.sessions_kv import LOGINS_BUCKET, SESSIONS_BUCKET
from gallery_registry.app import create_app_for
from gallery_registry.settings import RegistrySettings
from gallery_web.sessions import Session, unseal

SEEDER = "seed-admin"
USERS = [{"username": "wes", "password": "wes-pw", "groups": ["gallery-writers"]}]


@dataclass
class SignInStack:
    provider: RunningProvider
    gallery: str
    replica: Callable[[int | None], AbstractContextManager[Stack]]


@contextmanager
def sign_in_stack(
    workdir: Path, nats_url: str, *, grants: tuple[str, ...] = ("authorization_code",), token_lifetime_s: int = 600
) -> Iterator[SignInStack]:
    """The provider, the real registry and one Gallery, signing in as the confidential client `gallery`
    with `grants`; `stack.replica(port)` starts another Gallery on the same NATS (a replica, or the same
    Gallery again after a restart)."""
    gallery_port = free_port()
    gallery_url = f"http://127.0.0.1:{gallery_port}"
    client = {
        "client_id": "gallery",
        "client_secret": "gallery-secret",
        "redirect_uris": [f"{gallery_url}/auth/callback"],
        "grant_types": list(grants),
    }
    with running_provider(workdir, USERS, [client], access_token_lifetime_s=token_lifetime_s) as provider:
        oidc = {
            "oidc_issuer": provider.issuer,
            "oidc_audience": provider.audience,
            "oidc_group_roles": "gallery-writers=writer",
        }
        (workdir / "registry").mkdir()
        registry_settings = RegistrySettings(home=workdir / "registry", api_tokens=f"{SEEDER}:admin", **oidc)  # type: ignore[arg-type]
        with ExitStack() as started:
            registry_port = started.enter_context(
                served(create_app_for(registry_settings, with_bus=False), ready_path="/readyz")
            )

            def replica(port: int | None = None) -> AbstractContextManager[Stack]:
                return gallery_stack(
                    Scene(),
                    workdir / "gallery",
                    tokens=f"{SEEDER}:admin",
                    down=("trainer", "deployer", "monitor"),
                    registry_url=f"http://127.0.0.1:{registry_port}",
                    oidc_client_id="gallery",
                    oidc_client_secret="gallery-secret",
                    public_url=gallery_url,  # replicas behind one address: the identity provider knows one callback
                    gallery_port=port,
                    nats_url=nats_url,
                    **oidc,
                )

            running = started.enter_context(replica(gallery_port))
            yield SignInStack(provider, running.gallery, replica)


@pytest.fixture
def stack(tmp_path: Path, nats_server: EmbeddedNats) -> Iterator[SignInStack]:
    with sign_in_stack(tmp_path, nats_server.url) as running:
        yield running


def start_login(browser: httpx.Client, stack: SignInStack, next_path: str = "/") -> str:
    """The redirect to the provider's login; returns the provider's URL with the authorization request."""
    answer = browser.get(f"{stack.gallery}/auth/login", params={"next": next_path})
    assert answer.status_code == 303
    return answer.headers["location"]


def log_in_at_provider(login_url: str, username: str = "wes", password: str = "wes-pw") -> str:
    answer = httpx.post(login_url, data={"username": username, "password": password})
    assert answer.status_code == 302, answer.text
    return answer.headers["location"]


def test_a_confidential_gallery_signs_in_and_its_session_cookie_is_http_only_and_lax(stack: SignInStack) -> None:
    with httpx.Client() as browser:
        login_url = start_login(browser, stack, "/models?q=digits")
        query = parse_qs(urlsplit(login_url).query)
        assert query["code_challenge_method"] == ["S256"] and query["client_id"] == ["gallery"]
        callback = browser.get(log_in_at_provider(login_url))
        assert callback.status_code == 303 and callback.headers["location"] == "/models?q=digits"
        set_cookie = next(c for c in callback.headers.get_list("set-cookie") if c.startswith("gallery_session="))
        assert "HttpOnly" in set_cookie and "SameSite=lax" in set_cookie and "Secure" not in set_cookie
        assert browser.get(f"{stack.gallery}/auth/session").json() == {
            "sso": True,
            "signed_in": True,
            "name": "oidc:user-wes",
        }
        created = browser.post(
            f"{stack.gallery}/api/registry/api/v1/models", json={"name": "wes-model"}, headers={"Origin": stack.gallery}
        )
        assert created.status_code == 201, created.text
        # the same write from another site's page: the browser sends the cookie, the Gallery adds no token
        forged = browser.post(
            f"{stack.gallery}/api/registry/api/v1/models", json={"name": "evil"}, headers={"Origin": "http://evil.test"}
        )
        assert forged.status_code == 401
        assert browser.post(f"{stack.gallery}/auth/logout").json() == {"signed_in": False}
        assert browser.get(f"{stack.gallery}/api/gallery/catalogue").status_code == 401


def test_a_callback_this_browser_did_not_start_is_refused(stack: SignInStack) -> None:
    with httpx.Client() as victim, httpx.Client() as attacker:
        # the attacker's own login, whose code they try to plant in the victim's browser
        callback_url = log_in_at_provider(start_login(attacker, stack))
        planted = victim.get(callback_url)
        assert planted.status_code == 401
        assert "not started in this browser" in planted.json()["error"]
        assert "gallery_session" not in victim.cookies


def test_the_next_page_after_sign_in_is_never_another_site(stack: SignInStack) -> None:
    with httpx.Client() as browser:
        callback = browser.get(log_in_at_provider(start_login(browser, stack, "//evil.test/phish")))
        assert callback.headers["location"] == "/"


def test_wrong_credentials_stay_at_the_provider(stack: SignInStack) -> None:
    with httpx.Client() as browser:
        answer = httpx.post(start_login(browser, stack), data={"username": "wes", "password": "guess"})
        assert answer.status_code == 401 and "wrong user name or password" in answer.text


def sign_in(browser: httpx.Client, stack: SignInStack, at: str | None = None) -> str:
    """Sign in with the login started at the stack's Gallery and its callback answered by `at` (another
    replica); the session cookie."""
    callback_url = log_in_at_provider(start_login(browser, stack))
    if at is not None:
        callback_url = callback_url.replace(stack.gallery, at)
    callback = browser.get(callback_url)
    assert callback.status_code == 303, callback.text
    return str(browser.cookies["gallery_session"])


def signed_in(browser: httpx.Client, gallery: str) -> bool:
    return bool(browser.get(f"{gallery}/auth/session").json()["signed_in"])


def catalogue(browser: httpx.Client, gallery: str) -> int:
    """The status of a read that needs the person's token (the Gallery asks the real registry with it)."""
    return browser.get(f"{gallery}/api/gallery/catalogue").status_code


def bucket(nats_url: str, name: str) -> dict[str, bytes]:
    """Every live key of a KV bucket and its raw value, as any NATS user allowed to read it sees them."""

    async def read() -> dict[str, bytes]:
        nc = await nats.connect(nats_url)
        try:
            kv = await nc.jetstream().key_value(name)
            try:
                keys = await kv.keys()
            except NoKeysError:
                return {}
            return {key: (await kv.get(key)).value or b"" for key in keys}
        finally:
            await nc.close()

    return asyncio.run(read())


def stored_session(nats_url: str, cookie: str) -> Session | None:
    """The session a cookie opens in the sessions bucket, as the Gallery reads it."""
    for key, value in bucket(nats_url, SESSIONS_BUCKET).items():
        if (record := unseal("session", cookie, key, value)) is not None:
            return Session(**record)
    return None


def test_any_replica_answers_each_step_and_a_restart_signs_no_one_out(
    stack: SignInStack, nats_server: EmbeddedNats
) -> None:
    second_port = free_port()
    with httpx.Client() as browser:
        with stack.replica(second_port) as second:
            # the login starts at one replica and its callback lands on the other
            cookie = sign_in(browser, stack, at=second.gallery)
            assert signed_in(browser, stack.gallery) and signed_in(browser, second.gallery)
            assert catalogue(browser, stack.gallery) == 200 and catalogue(browser, second.gallery) == 200
        with stack.replica(second_port) as restarted:  # the same replica, started again
            assert signed_in(browser, restarted.gallery) and catalogue(browser, restarted.gallery) == 200
            assert browser.post(f"{restarted.gallery}/auth/logout").json() == {"signed_in": False}
    # signed out at one replica is signed out at all: the cookie, kept, opens nothing any more
    with httpx.Client(cookies={"gallery_session": cookie}) as replay:
        assert not signed_in(replay, stack.gallery) and catalogue(replay, stack.gallery) == 401
    assert bucket(nats_server.url, SESSIONS_BUCKET) == {} and bucket(nats_server.url, LOGINS_BUCKET) == {}


def test_nats_holds_no_token_and_no_cookie_of_a_session(stack: SignInStack, nats_server: EmbeddedNats) -> None:
    with httpx.Client() as browser:
        cookie = sign_in(browser, stack)
        session = stored_session(nats_server.url, cookie)
        assert session is not None and session.name == "oidc:user-wes" and session.access_token.count(".") == 2
        raw = bucket(nats_server.url, SESSIONS_BUCKET)
        assert len(raw) == 1 and cookie not in next(iter(raw))
        value = next(iter(raw.values()))
        for secret in (session.access_token, session.access_token.split(".")[1], "user-wes", cookie):
            assert secret.encode() not in value
        # sealed to its key: moved under another session's key it opens for no cookie
        assert unseal("session", cookie, "0" * 64, value) is None
        assert unseal("session", cookie + "x", next(iter(raw)), value) is None


def test_a_session_renews_its_token_on_every_replica_until_the_issuer_revokes_it(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    # a 33 s access token is due for renewal (30 s ahead of its expiry) 3 s after it was issued
    grants = ("authorization_code", "refresh_token")
    with (
        sign_in_stack(tmp_path, nats_server.url, grants=grants, token_lifetime_s=33) as stack,
        stack.replica(None) as second,
        httpx.Client() as browser,
    ):
        first = stored_session(nats_server.url, sign_in(browser, stack))
        assert first is not None and first.refresh_token is not None
        time.sleep(3.5)
        # both replicas find it due at once: one renews it, every request is answered with a good token
        galleries = [stack.gallery, second.gallery] * 4
        with ThreadPoolExecutor(len(galleries)) as pool:
            statuses = list(pool.map(lambda gallery: catalogue(browser, gallery), galleries))
        assert statuses == [200] * len(galleries)
        renewed = stored_session(nats_server.url, str(browser.cookies["gallery_session"]))
        assert renewed is not None and renewed.access_token != first.access_token
        assert renewed.refresh_token not in (None, first.refresh_token)  # the issuer rotated it
        assert renewed.expires_at > first.expires_at and renewed.renewing_until == 0.0
        # the issuer revokes the person's refresh tokens: at the next renewal the session ends
        assert stack.provider.revoke_refresh_tokens("wes") == 1
        time.sleep(3.5)
        assert catalogue(browser, second.gallery) == 401
        assert not signed_in(browser, stack.gallery)
        assert bucket(nats_server.url, SESSIONS_BUCKET) == {}


def test_sign_in_says_it_is_unavailable_while_nats_is_away(stack: SignInStack, nats_server: EmbeddedNats) -> None:
    with httpx.Client() as browser:
        sign_in(browser, stack)
        nats_server.stop()
        answer = browser.get(f"{stack.gallery}/api/gallery/catalogue")
        assert answer.status_code == 503 and "NATS" in answer.json()["error"]
        assert httpx.get(f"{stack.gallery}/readyz").status_code == 200  # the Gallery itself still serves
        assert browser.get(f"{stack.gallery}/").status_code == 200  # and its pages, whose API calls say why
