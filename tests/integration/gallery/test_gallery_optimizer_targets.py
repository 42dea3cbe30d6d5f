"""The model page's optimization section in a real browser: a report with measurements per hardware class
and execution provider shows the recommendation per target and each measurement with its hardware; a report
from before (no per-target figures) shows as it did."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from headless_chromium import headless_chromium
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

import gallery_web

STATIC = Path(gallery_web.__file__).parent / "static"
PAGE = """<!doctype html><meta charset="utf-8"><link rel="icon" href="favicon.svg"><body><main id="out"></main>
<script type="module">
import { optimizerSection } from "./model-sections.js";
window.render = (job, served) => document.getElementById("out").replaceChildren(optimizerSection(job, served));
window.ready = true;
</script>"""


def measurement(target: str, b32: float | None, accuracy: float | None, error: str | None = None) -> dict[str, object]:
    hardware_class, provider = target.split("/")
    return {
        "target": target,
        "hardware_class": hardware_class,
        "provider": provider,
        "latency_b1_p50_ms": None if b32 is None else b32 / 2,
        "latency_b32_p50_ms": b32,
        "accuracy": accuracy,
        "error": error,
    }


def variant(name: str, b32: float, *measurements: dict[str, object]) -> dict[str, object]:
    return {
        "name": name,
        "size_bytes": 1000,
        "latency_b1_p50_ms": b32 / 2,
        "latency_b32_p50_ms": b32,
        "accuracy": 0.95,
        "accuracy_delta": 0.0,
        "within_budget": True,
        "measurements": list(measurements),
    }


CPU, OV = "cpu-x86-avx2/cpu", "cpu-x86-avx2/openvino"
REPORT = {
    "recommended": "int8_dynamic",
    "recommendation_reason": "fastest",
    "measured_on": {"model": "AMD EPYC", "hardware_class": "cpu-x86-avx2", "cores": 2},
    "targets": {"present": [CPU, OV], "absent": {"tensorrt": "no GPU", "cuda": "no GPU"}},
    "recommendations": {
        CPU: {"target": CPU, "variant": "int8_dynamic", "reason": "fastest on cpu-x86-avx2/cpu"},
        OV: {"target": OV, "variant": "fp32", "reason": "fastest on cpu-x86-avx2/openvino"},
    },
    "variants": [
        variant("fp32", 0.7, measurement(CPU, 0.7, 0.95), measurement(OV, 2.7, 0.95)),
        variant(
            "int8_dynamic",
            0.2,
            measurement(CPU, 0.2, 0.95),
            measurement(OV, None, None, "not measurable on cpu-x86-avx2/openvino: IR version 14"),
        ),
    ],
}


@pytest.fixture(scope="module")
def page() -> Iterator[str]:
    class Static(SimpleHTTPRequestHandler):
        """The gallery's static files, and the test page that renders one section."""

        def log_message(self, *_: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == "/optimizer-test.html":
                body = PAGE.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Static, directory=str(STATIC)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/optimizer-test.html"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(page: str) -> Iterator[WebDriver]:
    with headless_chromium() as driver:
        driver.get(page)
        WebDriverWait(driver, 20).until(lambda d: d.execute_script("return window.ready === true"))
        yield driver


def render(browser: WebDriver, report: dict[str, object], served: list[dict[str, object]] | None = None) -> None:
    browser.execute_script(
        "window.render(arguments[0], arguments[1])", {"status": "succeeded", "report": report}, served
    )


def cells(browser: WebDriver, selector: str) -> list[str]:
    return [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, selector)]


def test_the_recommendation_per_target_and_each_measurements_hardware_are_shown(browser: WebDriver) -> None:
    render(browser, REPORT)
    assert cells(browser, f'#target-recommendations tr[data-target="{OV}"] td') == [
        OV,
        "fp32",
        "fastest on cpu-x86-avx2/openvino",
    ]
    refused = cells(browser, f'#target-measurements tr[data-variant="int8_dynamic"][data-target="{OV}"] td')
    assert refused[:3] == ["int8_dynamic", "cpu-x86-avx2", "openvino"]
    assert refused[-1] == "not measurable on cpu-x86-avx2/openvino: IR version 14"
    fp32_ov = cells(browser, f'#target-measurements tr[data-variant="fp32"][data-target="{OV}"] td')
    assert fp32_ov[4] == "2.7 ms" and fp32_ov[5] == "95.00 %"
    note = browser.find_element(By.CSS_SELECTOR, "#per-target p.note").text
    assert note.startswith("Not measured: ") and note.endswith(".")
    assert set(note.removeprefix("Not measured: ").removesuffix(".").split("; ")) == {
        "tensorrt (no GPU)",
        "cuda (no GPU)",
    }


def test_a_report_from_before_per_target_measurements_shows_as_it_did(browser: WebDriver) -> None:
    old = json.loads(json.dumps(REPORT))
    for key in ("targets", "recommendations"):
        del old[key]
    for row in old["variants"]:
        del row["measurements"]
    render(browser, old)
    assert browser.find_elements(By.CSS_SELECTOR, "#per-target") == []
    assert len(browser.find_elements(By.CSS_SELECTOR, "#variants tbody tr")) == 2
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_a_regressors_variants_read_in_r2(browser: WebDriver) -> None:
    """A regressor's report (`score: r2`) shows r2 and its change where a classifier's shows accuracy."""
    regressor = json.loads(json.dumps(REPORT))
    regressor["score"] = "r2"
    for row, (r2, change) in zip(regressor["variants"], ((0.9721, 0.0), (0.9712, -0.0009)), strict=True):
        row.update(accuracy=None, accuracy_delta=None, r2=r2, r2_delta=change)
        for m in row["measurements"]:
            m["r2"], m["accuracy"] = (r2 if m["latency_b32_p50_ms"] is not None else None), None
    render(browser, regressor)
    headers = cells(browser, "#variants thead th")
    assert "r2" in headers and "Δ r2" in headers and "accuracy" not in headers
    int8 = cells(browser, '#variants tr[data-variant="int8_dynamic"] td')
    assert int8[4] == "0.971" and int8[5] == "-0.09 pt"
    assert "r2" in cells(browser, "#target-measurements thead th")
    assert cells(browser, f'#target-measurements tr[data-variant="fp32"][data-target="{CPU}"] td')[5] == "0.972"
    assert browser.find_element(By.CSS_SELECTOR, "[data-chart=latency-accuracy]").text.startswith("Latency against r2")


def test_the_variant_serving_and_one_withdrawn_for_its_answers_are_marked(browser: WebDriver) -> None:
    """The deployer's view of the version's variants: FP32 serves because INT8's answers broke the quality
    SLO; INT8 is marked withdrawn, with why and how to serve it again."""
    why = "quality: variant int8_dynamic: online accuracy 70.0% is 25.0 points below the optimizer's 95.0%"
    served = [
        {"version": 3, "variant": "fp32", "serving": True, "recommended": False, "withdrawn": None},
        {"version": 3, "variant": "int8_dynamic", "serving": False, "recommended": True, "withdrawn": why},
    ]
    render(browser, REPORT, served)
    fp32 = browser.find_element(By.CSS_SELECTOR, '#variants tr[data-variant="fp32"] td').text
    int8 = browser.find_element(By.CSS_SELECTOR, '#variants tr[data-variant="int8_dynamic"] td')
    assert "serving" in fp32 and "withdrawn" not in fp32
    assert "withdrawn" in int8.text and "serving" not in int8.text
    assert int8.find_element(By.CSS_SELECTOR, "[data-withdrawn]").get_attribute("title") == why
    note = browser.find_element(By.CSS_SELECTOR, '.withdrawn-note p[data-variant="int8_dynamic"]').text
    assert note.startswith(f"int8_dynamic withdrawn: {why}.") and "--serve int8_dynamic" in note
    render(browser, REPORT)  # a version that does not serve: nothing marked
    assert "serving" not in browser.find_element(By.CSS_SELECTOR, '#variants tr[data-variant="fp32"] td').text
    assert browser.find_elements(By.CSS_SELECTOR, ".withdrawn-note") == []
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
