"""Single sign-on in headless Chromium: the Gallery sends a person to the OIDC provider's login
(tests/oidc_provider.py, its own process), back with the authorization code (PKCE), and shows the
catalogue of the real registry with the person's token; a reader's write is refused with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from gallery_fakes import Scene, gallery_stack
from headless_chromium import headless_chromium
from oidc_provider import RunningProvider, running_provider
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from uvicorn_thread import served

from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port
from gallery_registry.app import create_app_for
from gallery_registry.settings import RegistrySettings

pytestmark = pytest.mark.slow

SEEDER = "seed-admin"
MODEL = "digits-mlp"
USERS = [{"username": "rita", "password": "rita-pw", "groups": ["gallery-readers"]}]


@dataclass
class SignInStack:
    provider: RunningProvider
    gallery: str


@pytest.fixture
def stack(tmp_path: Path, nats_server: EmbeddedNats) -> Iterator[SignInStack]:
    gallery_port = free_port()
    gallery_url = f"http://127.0.0.1:{gallery_port}"
    clients = [{"client_id": "gallery", "redirect_uris": [f"{gallery_url}/auth/callback"]}]
    with running_provider(tmp_path, USERS, clients) as provider:
        oidc = {
            "oidc_issuer": provider.issuer,
            "oidc_audience": provider.audience,
            "oidc_name_claim": "preferred_username",
            "oidc_group_roles": "gallery-readers=reader",
        }
        (tmp_path / "registry").mkdir()
        registry_settings = RegistrySettings(home=tmp_path / "registry", api_tokens=f"{SEEDER}:admin", **oidc)  # type: ignore[arg-type]
        with served(create_app_for(registry_settings, with_bus=False), ready_path="/readyz") as registry_port:
            registry = f"http://127.0.0.1:{registry_port}"
            seed = {"Authorization": f"Bearer {SEEDER}"}
            created = httpx.post(f"{registry}/api/v1/models", json={"name": MODEL, "owner": "ann"}, headers=seed)
            created.raise_for_status()
            with gallery_stack(
                Scene(),
                tmp_path / "gallery",
                tokens=f"{SEEDER}:admin",
                down=("trainer", "deployer", "monitor"),
                registry_url=registry,
                oidc_client_id="gallery",
                public_url=gallery_url,
                gallery_port=gallery_port,
                nats_url=nats_server.url,  # where the Gallery keeps its sessions
                **oidc,
            ) as running:
                assert running.gallery == gallery_url
                yield SignInStack(provider, running.gallery)


def wait(driver: WebDriver, what: str, check: object, timeout: float = 30) -> object:
    # a page that re-renders while a check reads it leaves the check a stale element: look again
    waiting = WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,))
    return waiting.until(check, message=f"waiting for {what}")  # type: ignore[arg-type]


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    with headless_chromium() as driver:
        yield driver


def test_a_reader_signs_in_sees_the_catalogue_and_is_refused_a_write(stack: SignInStack, browser: WebDriver) -> None:
    browser.get(stack.gallery + "/")
    wait(browser, "the provider's login form", lambda d: d.current_url.startswith(stack.provider.issuer + "/authorize"))
    assert "code_challenge_method=S256" in browser.current_url
    browser.find_element(By.ID, "username").send_keys("rita")
    browser.find_element(By.ID, "password").send_keys("rita-pw")
    browser.find_element(By.ID, "sign-in").click()

    wait(browser, "the catalogue", lambda d: d.find_elements(By.CSS_SELECTOR, f'.model-card[data-model="{MODEL}"]'))
    assert browser.current_url == stack.gallery + "/"
    assert browser.find_element(By.ID, "token-state").text == "signed in as oidc:rita"
    cookie = browser.get_cookie("gallery_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Lax" and not cookie["secure"]
    assert browser.execute_script("return document.cookie") == ""  # the page itself never sees the session

    browser.get(f"{stack.gallery}/models/{MODEL}")
    wait(browser, "the model page", lambda d: d.find_element(By.ID, "view").get_attribute("data-ready") == "model")
    browser.find_element(By.ID, "card-edit").click()
    browser.find_element(By.ID, "card-save").click()
    message = wait(browser, "the refusal", lambda d: "writer role" in d.find_element(By.ID, "card-message").text)
    assert message
    assert (
        "this request needs the writer role; your token has reader" in browser.find_element(By.ID, "card-message").text
    )

    browser.find_element(By.ID, "sign-out").click()
    wait(
        browser, "the provider's login again", lambda d: d.current_url.startswith(stack.provider.issuer + "/authorize")
    )
    assert (
        httpx.get(f"{stack.gallery}/api/gallery/catalogue", cookies={"gallery_session": cookie["value"]}).status_code
        == 401
    )
