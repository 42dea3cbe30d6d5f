"""The model page's feature-importance section in a real browser for a text model: the gate's word-occlusion
importance shows its words as bars and says how they were measured (no "Mean |SHAP|"); a table model's
Kernel SHAP importance still says SHAP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from gate_reports import feature_importance
from headless_chromium import headless_chromium
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

import gallery_web

STATIC = Path(gallery_web.__file__).parent / "static"
PAGE = """<!doctype html><meta charset="utf-8"><link rel="icon" href="favicon.svg"><body><main id="out"></main>
<script type="module">
import { importanceSection } from "./explain-views.js";
window.render = (version) => document.getElementById("out").replaceChildren(importanceSection(version));
window.ready = true;
</script>"""
# what the gate's word_importance.py reports for a text model
WORDS = {
    "method": "word-occlusion",
    "target": "predicted class",
    "rows": 32,
    "words": 35,
    "groups": [
        {"name": "coach", "index": 0, "importance": 0.06, "texts": 8},
        {"name": "forecast", "index": 1, "importance": 0.034, "texts": 5},
        {"name": "league", "index": 2, "importance": 0.026, "texts": 8},
    ],
    "values": None,
    "seed": 0,
    "seconds": 2.1,
}


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    class Static(SimpleHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.path != "/importance-test.html":
                super().do_GET()
                return
            body = PAGE.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Static, directory=str(STATIC)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with headless_chromium() as driver:
            driver.get(f"http://127.0.0.1:{server.server_address[1]}/importance-test.html")
            WebDriverWait(driver, 20).until(lambda d: d.execute_script("return window.ready === true"))
            yield driver
    finally:
        server.shutdown()
        server.server_close()


def shown(browser: WebDriver, importance: dict[str, object]) -> tuple[str, list[str]]:
    browser.execute_script("window.render(arguments[0])", {"evaluation_report": {"feature_importance": importance}})
    note = browser.find_element(By.CSS_SELECTOR, "#feature-importance p.note").text
    bars = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#feature-importance .bars li")]
    return note, bars


def test_a_text_models_word_importance_says_how_it_was_measured(browser: WebDriver) -> None:
    note, bars = shown(browser, WORDS)
    assert note == (
        "Mean drop of the predicted class's probability when a word is removed from a text, over 32 held-out "
        "texts (word occlusion)."
    )
    assert bars == ["coach0.060", "forecast0.034", "league0.026"]  # label and figure, most important first
    section = browser.find_element(By.CSS_SELECTOR, "#feature-importance")
    assert section.get_attribute("data-top") == "coach"


def test_a_table_models_importance_still_says_shap(browser: WebDriver) -> None:
    note, bars = shown(browser, feature_importance([0.3, 0.1], ["petal length", "sepal width"]))
    assert note.startswith("Mean |SHAP| per feature for the predicted class over 32 held-out rows (kernel-shap")
    assert len(bars) == 2
