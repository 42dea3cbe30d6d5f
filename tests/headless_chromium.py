"""Debian's chromium driven by Selenium, headless, with the page's console kept for the tests to read."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver


@contextmanager
def headless_chromium(width: int = 1400, height: int = 1800) -> Iterator[WebDriver]:
    """A browser for the block; quits when it ends. `make test` (and `make bench`) install chromium and
    chromedriver; also used by `scripts/screenshots.py` and `bench/catalogue.py`."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        raise RuntimeError("chromium and chromedriver are not installed: run `make test`, which installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()
