"""Screenshots of the Gallery's pages for the README, taken from the real UI in headless Chromium.

    python scripts/screenshots.py                      # start a stack on free ports, train, shoot, stop it
    python scripts/screenshots.py --url http://127.0.0.1:8000 [--token T]   # shoot a running Gallery

Without --url it starts every service (as the browser tests do, in a temporary GALLERY_HOME), trains the
digits model twice with different learning rates (and iris once), waits for the optimizer, writes the
model cards, sends traffic with feedback on the answers (online quality), sends one model.trained for a
project that does not exist (a dead letter) and saves one PNG per page to docs/screenshots/. Needs chromium
and chromedriver (`make test` installs them).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "e2e")]

from gallery_stack import (  # noqa: E402
    MODEL,
    dead_letter_for_a_missing_project,
    gallery_stack,
    labelled_traffic,
    train,
    train_digits_twice,
    wait_for_optimizer,
)
from headless_chromium import headless_chromium  # noqa: E402

WIDTH = 1400
MAX_HEIGHT = 3200
CARD = {
    "description": "# Handwritten digits\n\nA small MLP that reads **8x8 grey-level images** of handwritten digits "
    "(scikit-learn's `digits`) and answers which digit from 0 to 9 each shows.",
    "intended_use": "- Demos and tests of the Model Gallery's lifecycle\n- A baseline for digit recognisers on "
    "tiny images",
    "limitations": "Trained on 1,257 images from 43 writers: it has never seen other scripts, scanned forms or "
    "larger images. See [the data set](https://archive.ics.uci.edu/dataset/80).",
}

IRIS_CARD = {"description": "Iris flowers from four measurements of their sepals and petals: a small tabular MLP."}
DETAILS = {
    MODEL: {"owner": "vision-team", "tags": {"domain": "vision", "dataset": "sklearn-digits"}},
    "iris-mlp": {"owner": "tabular-team", "tags": {"domain": "tabular", "dataset": "iris"}},
}


def wait(browser: WebDriver, what: str, condition: Callable[[WebDriver], Any], timeout: float = 30) -> Any:
    waiting = WebDriverWait(browser, timeout, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,))
    return waiting.until(condition, message=f"the page never showed {what}")


def page_ready(page: str) -> Callable[[WebDriver], bool]:
    return lambda b: b.find_element(By.ID, "view").get_attribute("data-ready") == page


def shoot(browser: WebDriver, out: Path) -> None:
    """The whole page, up to MAX_HEIGHT pixels tall."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    chrome = browser.execute_script("return window.outerHeight - window.innerHeight")  # the window's own bars
    browser.set_window_size(WIDTH, min(max(height, 800), MAX_HEIGHT) + chrome)
    time.sleep(0.3)
    browser.save_screenshot(str(out))
    browser.set_window_size(WIDTH, 1000)
    print(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")


def take(url: str, token: str | None, out_dir: Path, runs: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with headless_chromium(WIDTH, 1000) as browser:
        browser.get(url + "/")
        if token:
            browser.execute_script("sessionStorage.setItem('gallery.token', arguments[0])", token)
        pages: list[tuple[str, str, str]] = [
            ("catalogue", "/", "catalogue"),
            ("model", f"/models/{MODEL}", "model"),
            ("lineage", f"/models/{MODEL}/lineage", "lineage"),
            ("experiments", f"/runs?model={MODEL}", "runs"),
            ("compare", f"/compare?runs={','.join(runs[:2])}", "compare"),
            ("dead-letters", "/dead-letters", "dead-letters"),
        ]
        for name, path, page in pages:
            browser.get(url + path)
            wait(browser, name, page_ready(page))
            time.sleep(0.5)
            shoot(browser, out_dir / f"{name}.png")

        browser.get(f"{url}/models/{MODEL}/try")
        wait(browser, "try it", page_ready("try"))
        examples = browser.find_elements(By.CSS_SELECTOR, "button.example")  # none for a table: its row is filled in
        if examples:
            examples[min(2, len(examples) - 1)].click()
        browser.find_element(By.ID, "try-send").click()
        wait(browser, "the answer", lambda b: b.find_elements(By.ID, "try-result"))
        wait(browser, "the explanation", lambda b: b.find_elements(By.ID, "try-explanation"), timeout=60)
        shoot(browser, out_dir / "try.png")

        browser.get(f"{url}/monitoring/{MODEL}")
        time.sleep(6)  # the dashboard polls every few seconds: let it draw its charts
        shoot(browser, out_dir / "monitoring.png")


def runs_of(url: str, token: str | None) -> list[str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = httpx.get(f"{url}/api/trainer/api/v1/runs", params={"model": MODEL}, headers=headers, timeout=10)
    answer.raise_for_status()
    return [run["id"] for run in answer.json()]


def send_traffic(gateway: str, rows: int = 40) -> None:
    """A few inferences so the Monitoring view has figures to draw."""
    row = [float(i % 17) for i in range(64)]
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 64], "data": row}]}
    for _ in range(rows):
        httpx.post(f"{gateway}/v2/models/{MODEL}/infer", json=body, timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running Gallery (default: start a stack of its own)")
    parser.add_argument("--token", help="a reader token, when the Gallery has tokens on")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args()
    if args.url:
        take(args.url.rstrip("/"), args.token, args.out, runs_of(args.url, args.token))
        return
    with tempfile.TemporaryDirectory(prefix="gallery-screens-") as tmp, gallery_stack(Path(tmp) / "home") as stack:
        print("training digits twice (a few minutes)…", flush=True)
        trained = train_digits_twice(stack, Path(tmp))
        for version in (1, 2):
            wait_for_optimizer(stack, version)
        train(stack, REPO / "examples" / "iris.yaml")  # a second model for the catalogue
        registry = stack.services["registry"].url
        for name, details in DETAILS.items():
            httpx.patch(f"{registry}/api/v1/models/{name}", json=details, timeout=10).raise_for_status()
        httpx.put(f"{registry}/api/v1/models/{MODEL}/card", json=CARD, timeout=10).raise_for_status()
        httpx.put(f"{registry}/api/v1/models/iris-mlp/card", json=IRIS_CARD, timeout=10).raise_for_status()
        send_traffic(stack.services["gateway"].url)
        production = httpx.get(f"{registry}/api/v1/models/{MODEL}/aliases/production", timeout=10).json()
        labelled_traffic(stack, production)  # the Monitoring view's online accuracy beside the gate's
        dead_letter_for_a_missing_project(stack, "vision-research", f"{MODEL}-large")  # for the Dead letters page
        take(stack.services["gallery"].url, None, args.out, trained.runs)


if __name__ == "__main__":
    main()
