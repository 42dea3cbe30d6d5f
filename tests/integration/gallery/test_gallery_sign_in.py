"""The Gallery's sign-in over HTTP, as a browser and as an attacker's page would use it: the cookies it
sets, a callback it did not start, a redirect off-site, and writes from another origin."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from gallery_fakes import Scene, gallery_stack
from oidc_provider import RunningProvider, running_provider
from uvicorn_thread import served

from gallery_common.netutil import free_port
from gallery_registry.app import create_app_for
from gallery_registry.settings import RegistrySettings

SEEDER = "seed-admin"
USERS = [{"username": "wes", "password": "wes-pw", "groups": ["gallery-writers"]}]


@dataclass
class SignInStack:
    provider: RunningProvider
    gallery: str


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[SignInStack]:
    gallery_port = free_port()
    gallery_url = f"http://127.0.0.1:{gallery_port}"
    clients = [
        {"client_id": "gallery", "client_secret": "gallery-secret", "redirect_uris": [f"{gallery_url}/auth/callback"]}
    ]
    with running_provider(tmp_path, USERS, clients) as provider:
        oidc = {
            "oidc_issuer": provider.issuer,
            "oidc_audience": provider.audience,
            "oidc_group_roles": "gallery-writers=writer",
        }
        (tmp_path / "registry").mkdir()
        registry_settings = RegistrySettings(home=tmp_path / "registry", api_tokens=f"{SEEDER}:admin", **oidc)  # type: ignore[arg-type]
        with ExitStack() as started:
            registry_port = started.enter_context(
                served(create_app_for(registry_settings, with_bus=False), ready_path="/readyz")
            )
            running = started.enter_context(
                gallery_stack(
                    Scene(),
                    tmp_path / "gallery",
                    tokens=f"{SEEDER}:admin",
                    down=("trainer", "deployer", "monitor"),
                    registry_url=f"http://127.0.0.1:{registry_port}",
                    oidc_client_id="gallery",
                    oidc_client_secret="gallery-secret",
                    gallery_port=gallery_port,
                    **oidc,
                )
            )
            yield SignInStack(provider, running.gallery)


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
