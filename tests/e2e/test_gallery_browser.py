"""The Gallery web app in headless Chromium (Debian's chromium + chromedriver, driven by Selenium) against
the real stack: every service its own process, digits trained twice, the Gallery in front.

One stack for the module; the tests are steps of one story (the card edited in one is read back in the
next) and run in the order written.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from federated_lineage import SITES, WORST_SITE
from gallery_stack import (
    FEDERATED_MODEL,
    GALLERY_CLI,
    MODEL,
    REPO,
    TrainedModel,
    dead_letter_for_a_missing_project,
    gallery_stack,
    labelled_traffic,
    register_federated_version,
    start_second_gallery,
    train,
    train_digits_twice,
    wait_until,
)
from headless_chromium import headless_chromium
from lifecycle_stack import LifecycleStack
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from gallery_common.consumer import CONSUMER_HEADER, DLQ_PREFIX, ERROR_HEADER

pytestmark = [pytest.mark.slow, pytest.mark.story]

READER, WRITER = "gallery-reader-token", "gallery-writer-token"
GHOST, GHOST_MODEL = "ghost", "ghost-digits"  # a project created only once a dead letter names it


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LifecycleStack]:
    with gallery_stack(tmp_path_factory.mktemp("gallery") / "home", cpu_target_only=True) as running:
        yield running


@pytest.fixture(scope="module")
def trained(stack: LifecycleStack, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    return train_digits_twice(stack, tmp_path_factory.mktemp("specs"))


@pytest.fixture(scope="module")
def gallery(stack: LifecycleStack, trained: TrainedModel) -> str:
    return stack.services["gallery"].url


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with headless_chromium() as driver:
        yield driver


def page_errors(driver: WebDriver) -> list[dict[str, Any]]:
    """Errors the page's code logged since the last call; refused requests the page handles are not errors."""
    return [
        entry
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]
    ]


def wait_for(driver: WebDriver, what: str, condition: Callable[[WebDriver], Any], timeout: float = 30) -> Any:
    waiting = WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
    return waiting.until(condition, message=f"page never showed {what}")


def css(driver: WebDriver | WebElement, selector: str) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, selector)


def text(driver: WebDriver, selector: str) -> str:
    found = css(driver, selector)
    return found[0].text if found else ""


def ready(driver: WebDriver, page: str) -> bool:
    """Whether the router finished drawing `page` (app.js sets data-ready on <main> when a page is done)."""
    return driver.find_element(By.ID, "view").get_attribute("data-ready") == page and bool(
        css(driver, f'.page[data-page="{page}"]')
    )


def open_page(driver: WebDriver, url: str, page: str) -> None:
    driver.get(url)
    wait_for(driver, f"the {page} page", lambda d: ready(d, page))


def shown_accuracy(version: dict[str, Any]) -> str:
    """The gate's accuracy as the pages print it: a percentage with two decimals."""
    return f"{version['evaluation_report']['accuracy'] * 100:.2f} %"


def test_the_catalogue_lists_the_trained_model(browser: WebDriver, gallery: str, trained: TrainedModel) -> None:
    page_errors(browser)
    open_page(browser, gallery + "/", "catalogue")
    card = wait_for(browser, "the model's card", lambda d: css(d, f'.model-card[data-model="{MODEL}"]'))[0]
    v1 = trained.versions[0]
    assert "classification" in card.text
    assert f"v{v1['version']} · {v1['semver']}" in card.text or "production" in card.text
    assert shown_accuracy(v1) in card.text or shown_accuracy(trained.versions[1]) in card.text
    assert "serving" in card.text or "canary" in card.text

    # a search with no match empties the list and lands in the URL, so the view can be shared
    field = browser.find_element(By.CSS_SELECTOR, '#catalogue-filters input[name="q"]')
    field.send_keys("no-such-model")
    wait_for(browser, "no match", lambda d: "No model matches" in text(d, "#catalogue"))
    assert parse_qs(urlparse(browser.current_url).query) == {"q": ["no-such-model"]}
    browser.get(browser.current_url)  # the shared link opens the same view
    wait_for(browser, "no match again", lambda d: "No model matches" in text(d, "#catalogue"))
    assert browser.find_element(By.CSS_SELECTOR, '#catalogue-filters input[name="q"]').get_attribute("value") == (
        "no-such-model"
    )
    assert page_errors(browser) == []


def test_the_model_card_shows_the_gates_accuracy(browser: WebDriver, gallery: str, trained: TrainedModel) -> None:
    open_page(browser, gallery + "/", "catalogue")
    browser.execute_script("window.__samePage = true")
    link = wait_for(browser, "the model's link", lambda d: css(d, f'.model-card[data-model="{MODEL}"] a.model-name'))
    link[0].click()
    wait_for(browser, "the model page", lambda d: ready(d, "model"))
    assert browser.execute_script("return window.__samePage") is True, "an in-app link must not reload the page"
    assert urlparse(browser.current_url).path == f"/models/{MODEL}"
    assert text(browser, "#model-title") == MODEL

    production = httpx.get(f"{gallery}/api/registry/api/v1/models/{MODEL}/aliases/production", timeout=10).json()
    accuracy = wait_for(browser, "the gate's accuracy", lambda d: css(d, '#evaluation [data-metric="accuracy"]'))[0]
    assert shown_accuracy(production) in accuracy.text
    assert len(css(browser, "#per-class-recall li")) == len(production["class_names"])
    if "confusion_matrix" in production["evaluation_report"]:
        assert len(css(browser, "#confusion-matrix tbody tr")) == len(production["class_names"])
    assert f"v{production['version']}" in text(browser, "#versions")
    assert css(browser, '#deployments tr[data-stage="production"]')
    importance = production["evaluation_report"]["feature_importance"]
    section = wait_for(browser, "the feature importance", lambda d: css(d, "#feature-importance canvas.heat-map"))
    assert section, "digits are pictures: the importance is drawn over the 8x8 grid"
    assert css(browser, "#feature-importance")[0].get_attribute("data-top") == importance["groups"][0]["name"]
    assert len(css(browser, "#feature-importance .bars li")) == min(12, len(importance["groups"]))
    assert css(browser, "#federation") == [], "trained in one place: no federated panel"
    assert "No feedback on" in text(browser, "#online-quality"), "no answer was labelled yet"
    assert css(browser, "#downloads #download-card")
    assert css(browser, '#downloads button[data-download="onnx"]')
    onnx = httpx.get(
        f"{gallery}/api/gallery/models/{MODEL}/versions/{production['version']}/artifacts/onnx", timeout=30
    )
    assert (
        onnx.status_code == 200
        and hashlib.sha256(onnx.content).hexdigest() == production["artifacts"]["onnx"]["sha256"]
    )
    assert page_errors(browser) == []


def test_the_model_page_says_who_put_the_version_in_production_and_why(
    browser: WebDriver, gallery: str, trained: TrainedModel
) -> None:
    production = httpx.get(f"{gallery}/api/registry/api/v1/models/{MODEL}/aliases/production", timeout=10).json()
    version = production["version"]
    trail = httpx.get(f"{gallery}/api/registry/api/v1/audit", params={"model": MODEL, "limit": 200}, timeout=10)
    records = trail.json()
    # the stack recorded it: the registry's alias move, the deployer's deployment or promotion
    made = next(
        r
        for r in records
        if (r["action"] == "alias_move" and r["alias"] == "production" and r["after"] == {"version": version})
        or (
            r["action"] in ("deployment", "promotion")
            and r["version"] == version
            and r["after"]["stage"] == "production"
        )
    )
    open_page(browser, f"{gallery}/models/{MODEL}", "model")
    line = wait_for(browser, "who put it in production", lambda d: text(d, "#audit-production"))
    assert f"v{version} was put in production by {made['actor']}" in line
    assert (made["reason"] or "no reason given") in line
    assert len(css(browser, "#audit tbody tr")) == min(20, len(records))
    assert page_errors(browser) == []


def test_the_model_page_shows_online_accuracy_from_feedback_beside_the_gates(
    browser: WebDriver, stack: LifecycleStack, gallery: str, trained: TrainedModel
) -> None:
    production = httpx.get(f"{gallery}/api/registry/api/v1/models/{MODEL}/aliases/production", timeout=10).json()
    quality = f"{gallery}/api/monitor/api/v1/models/{MODEL}/quality"

    def labelled_so_far() -> int:
        answer = httpx.get(quality, timeout=10)
        return sum(v["labelled_rows"] for v in answer.json()["versions"]) if answer.status_code == 200 else 0

    # rows labelled earlier in the module count too: wait for exactly this test's rows on top of them (the
    # monitor stores outcomes as they come, many at once, so a sum that merely reaches `rows` may be partial)
    before = labelled_so_far()
    rows = labelled_traffic(stack, production)

    def labelled() -> dict[str, Any] | None:
        """The production version's figures once every labelled row is in (a canary may have answered some)."""
        versions = httpx.get(quality, timeout=10).json()["versions"]
        if sum(v["labelled_rows"] for v in versions) < before + rows:
            return None
        return next((v for v in versions if v["version"] == str(production["version"])), None)

    online = wait_until("the monitor's online accuracy of every labelled row", labelled, 60)
    assert online["gate_accuracy"] == production["evaluation_report"]["accuracy"]
    open_page(browser, f"{gallery}/models/{MODEL}", "model")
    figure = '#online-quality [data-metric="online_accuracy"]'
    shown = wait_for(browser, "the online accuracy", lambda d: text(d, figure))
    assert f"{online['accuracy'] * 100:.2f} %" in shown and f"{online['labelled_rows']:,} rows" in shown
    assert shown_accuracy(production) in text(browser, '#online-quality [data-metric="gate_accuracy"]')
    delta = (online["accuracy"] - online["gate_accuracy"]) * 100
    written = text(browser, '#online-quality [data-metric="accuracy_delta"]').split(" pt")[0]  # "+1.2", "0.0", "-3.4"
    assert float(written) == pytest.approx(delta, abs=0.051) and (written == "0.0") == (abs(delta) < 0.05)
    # which variant gave those answers (the optimizer's recommended one, once rolled in), one row each
    shown_variants = [
        tr.get_attribute("data-variant") for tr in css(browser, "#online-quality .variant-quality tbody tr")
    ]
    assert shown_variants == [v["variant"] for v in online["variants"]] and all(shown_variants)
    assert page_errors(browser) == []


def test_editing_the_description_persists(browser: WebDriver, gallery: str, trained: TrainedModel) -> None:
    open_page(browser, f"{gallery}/models/{MODEL}", "model")
    browser.find_element(By.ID, "card-edit").click()
    description = (
        "Reads **handwritten** digits.\n\n- 8x8 pixels\n- <script>window.__injected = 1</script>\n\n"
        "[the data](https://archive.ics.uci.edu/dataset/80) and [a trap](javascript:window.__injected=2)"
    )
    area = browser.find_element(By.CSS_SELECTOR, '#card-form textarea[name="description"]')
    area.clear()
    area.send_keys(description)
    browser.find_element(By.ID, "card-save").click()
    wait_for(browser, "the saved card", lambda d: "Saved as revision" in text(d, "#card-message"))
    rendered = browser.find_element(By.CSS_SELECTOR, '[data-field="description"] .markdown')
    assert rendered.find_element(By.TAG_NAME, "strong").text == "handwritten"
    assert "<script>window.__injected = 1</script>" in rendered.text, "HTML in a card is shown as text"
    assert browser.execute_script("return window.__injected") is None
    links = [a.get_attribute("href") for a in rendered.find_elements(By.TAG_NAME, "a")]
    assert links == ["https://archive.ics.uci.edu/dataset/80"], "only http(s) links become links"

    browser.refresh()
    wait_for(browser, "the model page after a reload", lambda d: ready(d, "model"))
    assert "Reads handwritten digits." in text(browser, '[data-field="description"]')
    card = httpx.get(f"{gallery}/api/registry/api/v1/models/{MODEL}/card", timeout=10).json()
    assert card["description"] == description
    assert page_errors(browser) == []


def test_try_it_returns_a_class_and_why(browser: WebDriver, gallery: str, trained: TrainedModel) -> None:
    open_page(browser, f"{gallery}/models/{MODEL}/try", "try")
    examples = wait_for(browser, "held-out examples", lambda d: css(d, "button.example"))
    examples[1].click()
    browser.find_element(By.ID, "try-send").click()
    result = wait_for(browser, "the answer", lambda d: css(d, "#try-result"))[0]
    class_names = trained.versions[0]["class_names"]
    predicted = result.get_attribute("data-predicted")
    assert predicted in class_names
    assert len(css(browser, "#try-result .bars li")) == len(class_names)
    assert "served by digits-mlp" in result.text

    why = wait_for(browser, "the explanation", lambda d: css(d, "#try-explanation"), timeout=60)[0]
    assert why.get_attribute("data-method") == "shap"
    assert why.get_attribute("data-target") == str(class_names.index(predicted)), "the predicted class is explained"
    assert css(browser, "#try-explanation canvas.heat-map"), "a picture's attribution is a heat map over it"
    assert why.get_attribute("data-top").startswith("patch (")
    assert len(css(browser, "#try-explanation .bars.signed li")) == 6

    Select(browser.find_element(By.ID, "try-method")).select_by_value("lime")
    browser.find_element(By.ID, "try-send").click()
    lime = wait_for(
        browser,
        "the LIME explanation",
        lambda d: [e for e in css(d, "#try-explanation") if e.get_attribute("data-method") == "lime"],
        timeout=60,
    )
    assert "LIME" in lime[0].text
    assert page_errors(browser) == []


def test_the_cli_explains_a_held_out_row(stack: LifecycleStack, trained: TrainedModel) -> None:
    result = subprocess.run(
        [str(GALLERY_CLI), "explain", MODEL, "--from-test", "3", "--top", "5"],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "row 3 of the test split of digits-mlp" in result.stdout
    assert "predicts class" in result.stdout and "SHAP (shap.KernelExplainer" in result.stdout
    assert result.stdout.count("patch (") == 5, "the five patches that mattered most"
    assert "attribution over the picture" in result.stdout

    refused = subprocess.run(
        [str(GALLERY_CLI), "explain", MODEL, "--row", "[1, 2, 3]"],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1 and "(400)" in refused.stderr and "64" in refused.stderr


def test_compare_shows_two_runs_curves(browser: WebDriver, gallery: str, trained: TrainedModel) -> None:
    open_page(browser, f"{gallery}/runs?model={MODEL}", "runs")
    for run in trained.runs:
        browser.find_element(By.CSS_SELECTOR, f'input.pick[data-run="{run}"]').click()
    browser.find_element(By.ID, "compare-selected").click()
    wait_for(browser, "the compare page", lambda d: ready(d, "compare"))
    assert set(parse_qs(urlparse(browser.current_url).query)["runs"][0].split(",")) == set(trained.runs)
    curves = css(browser, 'figure[data-chart="val_accuracy"] g.series path.line')
    assert len(curves) == 2, "one val_accuracy curve per run"
    assert {c.find_element(By.XPATH, "..").get_attribute("data-key") for c in curves} == set(trained.runs)
    differing = {row.get_attribute("data-param") for row in css(browser, "#compare-params tr.differs")}
    assert {"training.learning_rate", "training.epochs"} <= differing
    assert css(browser, '#final-metrics tr[data-metric="val_accuracy"]')
    assert page_errors(browser) == []


def test_deep_links_open_their_page_and_back_returns(browser: WebDriver, gallery: str, trained: TrainedModel) -> None:
    open_page(browser, f"{gallery}/models/{MODEL}/versions/1", "model")
    picker = browser.find_element(By.ID, "version-picker")
    assert picker.get_attribute("value") == "1"
    assert text(browser, "#model-title") == MODEL

    runs = ",".join(trained.runs)
    open_page(browser, f"{gallery}/compare?runs={runs}", "compare")
    assert len(css(browser, "#curves figure")) >= 2
    browser.find_element(By.CSS_SELECTOR, f'.run-keys li[data-run="{trained.runs[0]}"] a').click()
    wait_for(browser, "the run page", lambda d: ready(d, "run"))
    assert text(browser, "#run-title") == f"Run {trained.runs[0]}"

    browser.back()
    wait_for(browser, "the compare page again", lambda d: ready(d, "compare"))
    assert urlparse(browser.current_url).path == "/compare"
    browser.back()
    wait_for(browser, "the version page again", lambda d: ready(d, "model"))
    assert urlparse(browser.current_url).path == f"/models/{MODEL}/versions/1"

    open_page(browser, f"{gallery}/models/{MODEL}/lineage", "lineage")
    kinds = {node.get_attribute("data-kind") for node in css(browser, ".lineage-svg g.node")}
    assert {"dataset", "run", "version"} <= kinds
    assert page_errors(browser) == []


def metered(gallery: str, since: str = "1h") -> dict[str, Any]:
    """The deployer's usage report of MODEL, read through the Gallery as the page reads it."""
    query = {"since": since, "model": MODEL}
    return dict(httpx.get(f"{gallery}/api/deployer/api/v1/usage", params=query, timeout=10).json())


def test_the_usage_page_shows_what_the_gateway_metered(
    browser: WebDriver, stack: LifecycleStack, gallery: str, trained: TrainedModel
) -> None:
    before = metered(gallery)["totals"]
    rows = [[0.5] * 64] * 3
    body = {"inputs": [{"name": "features", "shape": [3, 64], "datatype": "FP32", "data": rows}]}
    for _ in range(4):
        answer = httpx.post(f"{stack.services['gateway'].url}/v2/models/{MODEL}/infer", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
    # other traffic (the canary's analysis) may reach the gateway too: at least these four requests and rows
    seen: list[dict[str, Any]] = []

    def reported() -> dict[str, Any] | None:
        totals = metered(gallery)["totals"]
        seen.append(totals)
        grown = totals["requests"] - before["requests"] >= 4 and totals["rows"] - before["rows"] >= 12
        return totals if grown else None

    try:
        totals = wait_until("the four requests in the usage report", reported, timeout=30)
    except TimeoutError as exc:
        raise AssertionError(f"before {before}, last read {seen[-1:]}") from exc
    report = metered(gallery)
    assert {row["caller"] for row in report["rows"]} == {"local"}, "no tokens in this stack: the caller is 'local'"

    open_page(browser, f"{gallery}/usage?since=1h&model={MODEL}", "usage")
    after = metered(gallery)["totals"]
    shown = int(css(browser, "#usage-report")[0].get_attribute("data-requests") or 0)
    assert totals["requests"] <= shown <= after["requests"], "the page shows the deployer's report"
    total = css(browser, "#usage-table tr[data-total]")[0].text
    assert total.split()[:2] == ["total", str(shown)]
    assert css(browser, f'#usage-table tr[data-model="{MODEL}"][data-caller="local"]')
    assert css(browser, f'[data-chart="usage-requests"] g.series[data-key="{MODEL}"] path.line')

    Select(browser.find_element(By.CSS_SELECTOR, '#usage-filters select[name="period"]')).select_by_value("day")
    browser.find_element(By.CSS_SELECTOR, '#usage-filters button[type="submit"]').click()
    wait_for(browser, "the daily report", lambda d: "Usage per day" in text(d, "#usage-report"))
    assert parse_qs(urlparse(browser.current_url).query)["period"] == ["day"]
    assert page_errors(browser) == []

    table = subprocess.run(
        [str(GALLERY_CLI), "usage", "--since", "1h", "--model", MODEL, "--format", "csv"],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0] == "period_start,model,version,caller,requests,rows,compute_seconds"
    assert sum(int(line.split(",")[4]) for line in table.stdout.splitlines()[1:]) >= totals["requests"]


def test_an_imported_run_shows_its_file_and_what_was_changed_instead_of_curves(
    browser: WebDriver, stack: LifecycleStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A model imported with `gallery models import` (here its API): the run page names the file and lists
    each change the trainer made to it; there are no training curves to draw."""
    gallery = stack.services["gallery"].url
    out = tmp_path_factory.mktemp("wine-import")
    example = Path(__file__).resolve().parents[2] / "examples" / "sklearn_to_onnx.py"
    subprocess.run([sys.executable, str(example), str(out)], check=True, capture_output=True, timeout=120)
    files = {
        name: (f"{name}.bin", (out / file).read_bytes())
        for name, file in (("onnx", "wine-forest.onnx"), ("train", "train.npz"), ("test", "test.npz"))
    }
    answer = httpx.post(
        f"{stack.services['trainer'].url}/api/v1/imports", data={"model": "wine-forest"}, files=files, timeout=60
    )
    assert answer.status_code == 201, answer.text
    imported = answer.json()
    assert imported["changes"], "skl2onnx's layout is always adapted"

    open_page(browser, f"{gallery}/runs/{imported['run_id']}", "run")
    card = wait_for(browser, "the import card", lambda d: css(d, "#run-import"))[0]
    assert "onnx.bin" in card.text
    assert [item.text for item in css(browser, "#import-changes li")] == imported["changes"]
    assert not css(browser, "#curves")
    assert page_errors(browser) == []


def test_a_federated_version_shows_its_sites_and_the_worst_one(browser: WebDriver, stack: LifecycleStack) -> None:
    # the stack's Gallery without `trained`, so this test alone needs no training run
    gallery = stack.services["gallery"].url
    registered = register_federated_version(stack)
    open_page(browser, f"{gallery}/models/{FEDERATED_MODEL}", "model")
    panel = wait_for(browser, "the federated panel", lambda d: css(d, "#federation"))[0]
    assert registered["lineage"]["federation"]["sites"][0]["name"] in panel.text

    rows = css(browser, "#federation-sites tbody tr")
    assert [row.get_attribute("data-site") for row in rows] == list(SITES)
    for row in rows:
        accuracy = SITES[row.get_attribute("data-site")][3]
        assert f"{accuracy * 100:.2f} %" in row.text
    worst = css(browser, "#federation-sites tr.worst")
    assert [row.get_attribute("data-site") for row in worst] == [WORST_SITE] and "worst" in worst[0].text
    assert panel.get_attribute("data-worst") == WORST_SITE
    assert text(browser, "#federation-spread") == (
        f"Worst site: {WORST_SITE} (88.70 %); spread between the best and the worst site: 7.5 points."
    )
    assert "ε 3.2" in text(browser, '#federation [data-fact="privacy"]')
    assert text(browser, '#federation [data-fact="secure_aggregation"]').startswith("yes")
    assert page_errors(browser) == []


def test_with_tokens_nothing_shows_without_one(browser: WebDriver, stack: LifecycleStack, gallery: str) -> None:
    guarded = start_second_gallery(stack, f"{READER}:reader,{WRITER}:writer").url
    assert httpx.get(f"{guarded}/api/gallery/catalogue", timeout=10).status_code == 401
    assert httpx.get(f"{guarded}/api/registry/api/v1/models/{MODEL}", timeout=10).status_code == 401

    browser.get(guarded + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(guarded + "/")
    wait_for(browser, "the token form", lambda d: d.find_element(By.ID, "auth").is_displayed())
    assert css(browser, ".model-card") == []
    dead_letters = browser.find_element(By.CSS_SELECTOR, '.mainnav a[data-nav="dead-letters"]')
    assert not dead_letters.is_displayed(), "an admin's page: no link for a caller nobody knows"
    field = browser.find_element(By.ID, "auth-token")
    field.send_keys(READER)
    browser.find_element(By.CSS_SELECTOR, "#auth button[type=submit]").click()
    wait_for(browser, "the catalogue with the token", lambda d: css(d, f'.model-card[data-model="{MODEL}"]'))
    # the services behind this Gallery run without tokens, so the registry calls every caller an admin
    wait_for(browser, "the Dead letters link", lambda d: dead_letters.is_displayed())
    assert browser.execute_script("return sessionStorage.getItem('gallery.token')") == READER
    assert browser.execute_script("return localStorage.length") == 0, "the token is kept for the session only"
    assert page_errors(browser) == []


def test_try_it_classifies_a_typed_text(
    browser: WebDriver, stack: LifecycleStack, gallery: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A text model (examples/text-topics.yaml, trained through the same stack): Try it shows a text box
    pre-filled from a held-out text, and a typed definition gets its topic from the gateway."""
    model = "wordnet-topics"
    spec = tmp_path_factory.mktemp("text") / "text-topics.yaml"
    spec.write_text((REPO / "examples" / "text-topics.yaml").read_text().replace("epochs: 6", "epochs: 4"))
    train(stack, spec)

    def serving() -> bool:
        rows = httpx.get(f"{stack.services['deployer'].url}/api/v1/deployments", timeout=10).json()
        return any(r["model"] == model and r["state"] == "ready" for r in rows)

    wait_until("the text model serving", serving, 240)
    open_page(browser, f"{gallery}/models/{model}/try", "try")
    area = wait_for(browser, "the text box", lambda d: css(d, "#try-text"))[0]
    assert area.get_attribute("value"), "pre-filled from a held-out text"
    assert css(browser, "#try-method") == [], "a text model is explained on its model page, not here"
    area.clear()
    area.send_keys("large feline of forests in most of Asia having a tawny coat with black stripes")
    browser.find_element(By.ID, "try-send").click()
    result = wait_for(browser, "the answer", lambda d: css(d, "#try-result"))[0]
    assert result.get_attribute("data-predicted") == "animal"
    assert "served by wordnet-topics v1" in result.text
    assert page_errors(browser) == []


def letter_naming_no_event(stack: LifecycleStack) -> int:
    """A dead letter a service wrote by hand, without the stored event's sequence; its number."""

    async def write() -> int:
        async with stack.bus("trainer") as trainer:
            headers = {ERROR_HEADER: "written by hand", CONSUMER_HEADER: "registry-gate"}
            ack = await trainer.publish_raw(DLQ_PREFIX + "model.trained.default", b'{"by": "hand"}', headers)
            return int(ack.seq)

    return asyncio.run(write())


def test_a_dead_letter_is_put_back_from_its_page_once_its_cause_is_fixed(
    browser: WebDriver, stack: LifecycleStack, gallery: str, trained: TrainedModel
) -> None:
    """The digits run's model.trained sent again for a project that does not exist: the gate dead-letters it,
    the Dead letters page says why, and once the project exists "Put back" has the trainer send it again
    (for the gate only): the model lands in the project and the letter is gone."""
    letter = dead_letter_for_a_missing_project(stack, GHOST, GHOST_MODEL)
    assert (letter["consumer"], letter["publisher"], letter["project"]) == ("registry-gate", "trainer", GHOST)
    unnamed = letter_naming_no_event(stack)

    page_errors(browser)
    open_page(browser, gallery + "/", "catalogue")  # an admin (no tokens in this stack) has the link
    link = browser.find_element(By.CSS_SELECTOR, '.mainnav a[data-nav="dead-letters"]')
    wait_for(browser, "the Dead letters link", lambda d: link.is_displayed())
    link.click()
    wait_for(browser, "the Dead letters page", lambda d: ready(d, "dead-letters"))
    row = wait_for(browser, "the letter's row", lambda d: css(d, f'#dead-letters tr[data-seq="{letter["seq"]}"]'))[0]
    assert f"model.trained.{GHOST}" in row.text and "registry-gate" in row.text
    assert f"project '{GHOST}' does not exist" in row.text
    # a letter that names no stored event cannot go back: no button to press
    other = wait_for(browser, "the other row", lambda d: css(d, f'#dead-letters tr[data-seq="{unnamed}"]'))[0]
    assert other.find_elements(By.CSS_SELECTOR, "button.put-back") == []

    created = httpx.post(f"{stack.services['registry'].url}/api/v1/projects", json={"name": GHOST}, timeout=10)
    assert created.status_code == 201, created.text
    row.find_element(By.CSS_SELECTOR, "button.put-back").click()
    wait_for(
        browser,
        "the letter put back",
        lambda d: f"dead letter {letter['seq']} put back for registry-gate" in text(d, "#dead-letters-status"),
    )
    assert css(browser, f'#dead-letters tr[data-seq="{letter["seq"]}"]') == []
    model = wait_until(
        "the model in its project",
        lambda: (
            (a := httpx.get(f"{stack.services['registry'].url}/api/v1/models/{GHOST_MODEL}", timeout=10)).status_code
            == 200
            and a.json()
        ),
        120,
    )
    assert model["project"] == GHOST
    open_page(browser, gallery + "/dead-letters", "dead-letters")  # drawn again: the letter is out for good
    assert css(browser, f'#dead-letters tr[data-seq="{letter["seq"]}"]') == []
    assert page_errors(browser) == []
