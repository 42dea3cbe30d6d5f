"""Projects in the Gallery, in headless Chromium, in front of the real registry on a real nats-server
(the projects bucket lives there), with two project-scoped static tokens.

A member of team-a sees only team-a's models in the catalogue, each with its project, and a picker of
only the projects it holds a role in; team-b's model page by URL is the page of a model that does not
exist; the projects page shows the caller's role and, to a project's admin, the members.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gallery_fakes import Scene, gallery_stack
from headless_chromium import headless_chromium
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait
from uvicorn_thread import served

from gallery_common.nats_server import EmbeddedNats
from gallery_registry.app import create_app_for
from gallery_registry.settings import RegistrySettings

ADMIN = "g-admin"  # installation-wide admin: seeds the projects and models
A_ADMIN, B_READER = "team-a-admin", "team-b-reader"
TOKENS = f"{ADMIN}:admin,{A_ADMIN}:team-a:admin,{B_READER}:team-b:reader"


@pytest.fixture
def gallery(nats_server: EmbeddedNats, tmp_path: Path) -> Iterator[str]:
    (tmp_path / "registry").mkdir()
    settings = RegistrySettings(home=tmp_path / "registry", nats_url=nats_server.url, api_tokens=TOKENS)  # type: ignore[arg-type]
    with served(create_app_for(settings), ready_path="/readyz") as registry_port:
        registry = f"http://127.0.0.1:{registry_port}"
        with httpx.Client(base_url=registry, headers={"Authorization": f"Bearer {ADMIN}"}) as http:
            for project in ("team-a", "team-b"):
                http.post(
                    "/api/v1/projects", json={"name": project, "description": f"{project} models"}
                ).raise_for_status()
            for model, project in (("a-model", "team-a"), ("b-model", "team-b")):
                http.post("/api/v1/models", json={"name": model, "project": project}).raise_for_status()
            http.put("/api/v1/projects/team-a/members/oidc:ada", json={"role": "writer"}).raise_for_status()
        with gallery_stack(
            Scene(), tmp_path / "gallery", tokens=TOKENS, down=("trainer", "monitor"), registry_url=registry
        ) as running:
            yield running.gallery


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    with headless_chromium() as driver:
        yield driver


def wait(driver: WebDriver, what: str, check: object, timeout: float = 30) -> object:
    # a page that re-renders while a check reads it leaves the check a stale element: look again
    waiting = WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,))
    return waiting.until(check, message=f"waiting for {what}")  # type: ignore[arg-type]


def sign_in_with(driver: WebDriver, gallery: str, token: str) -> None:
    driver.get(gallery + "/usage")
    driver.execute_script("sessionStorage.setItem('gallery.token', arguments[0])", token)


def catalogue_models(driver: WebDriver) -> list[str]:
    return [card.get_attribute("data-model") or "" for card in driver.find_elements(By.CSS_SELECTOR, ".model-card")]


def ready(driver: WebDriver, page: str) -> bool:
    return driver.find_element(By.ID, "view").get_attribute("data-ready") == page


def test_a_member_of_team_a_never_sees_team_bs_models(gallery: str, browser: WebDriver) -> None:
    sign_in_with(browser, gallery, A_ADMIN)
    browser.get(gallery + "/")
    wait(browser, "team-a's model", lambda d: catalogue_models(d) == ["a-model"])
    card = browser.find_element(By.CSS_SELECTOR, '.model-card[data-model="a-model"]')
    assert "team-a" in card.text
    picker = Select(browser.find_element(By.NAME, "project"))
    assert [o.text for o in picker.options] == ["any", "team-a"]
    picker.select_by_value("team-a")
    wait(browser, "the project in the URL", lambda d: "project=team-a" in d.current_url)
    wait(browser, "the filtered catalogue", lambda d: catalogue_models(d) == ["a-model"])

    # a shared link to team-b's catalogue: the project is not found, and nothing of it is shown
    browser.get(gallery + "/?project=team-b")
    wait(browser, "the refusal", lambda d: "project 'team-b' not found" in d.find_element(By.ID, "view").text)
    assert catalogue_models(browser) == []

    # team-b's model by URL: the page of a model that does not exist, word for word
    browser.get(gallery + "/models/no-such-model")
    wait(
        browser,
        "the missing model's page",
        lambda d: ready(d, "model") or "not found" in d.find_element(By.ID, "view").text,
    )
    missing = browser.find_element(By.ID, "view").text
    browser.get(gallery + "/models/b-model")
    wait(browser, "b-model's page", lambda d: ready(d, "model") or "not found" in d.find_element(By.ID, "view").text)
    hidden = browser.find_element(By.ID, "view").text
    assert "not found" in hidden
    assert hidden.replace("b-model", "X") == missing.replace("no-such-model", "X")

    browser.get(gallery + "/models/a-model")
    wait(browser, "a-model's project", lambda d: d.find_elements(By.ID, "model-project"))
    assert browser.find_element(By.ID, "model-project").text == "project team-a"


def test_the_projects_page_shows_roles_and_members_to_admins_only(gallery: str, browser: WebDriver) -> None:
    sign_in_with(browser, gallery, A_ADMIN)
    browser.get(gallery + "/projects")
    wait(browser, "the projects", lambda d: d.find_elements(By.CSS_SELECTOR, ".project"))
    projects = browser.find_elements(By.CSS_SELECTOR, ".project")
    assert [p.get_attribute("data-project") for p in projects] == ["team-a"]
    assert "admin" in projects[0].text and "oidc:ada" in projects[0].text and "writer" in projects[0].text

    sign_in_with(browser, gallery, B_READER)
    browser.get(gallery + "/projects")
    wait(browser, "the projects", lambda d: d.find_elements(By.CSS_SELECTOR, ".project"))
    projects = browser.find_elements(By.CSS_SELECTOR, ".project")
    assert [p.get_attribute("data-project") for p in projects] == ["team-b"]
    assert "reader" in projects[0].text and "admins" in projects[0].text and "oidc:ada" not in projects[0].text
    browser.get(gallery + "/")
    wait(browser, "team-b's model", lambda d: catalogue_models(d) == ["b-model"])
