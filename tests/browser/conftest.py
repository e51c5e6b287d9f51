"""A real headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven by Selenium.

``.ci/run`` installs both packages when they are missing. Every test gets a fresh profile
directory and the browser's console log, so a test can assert the page logged no error.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from tests.integration.readiness.conftest import setup  # noqa: F401  # the shared fixture

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)


@pytest.fixture
def db_url(data_dir: Path) -> str:
    """SQLite only: the page does not care which store answers, and browsers are slow to start."""
    return f"sqlite+aiosqlite:///{data_dir / 'keel.db'}"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    profile = tmp_path / "chromium-profile"
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver: WebDriver) -> list[dict[str, Any]]:
    logs: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[attr-defined]  # Chrome's driver has it
    return [entry for entry in logs if entry["level"] == "SEVERE"]
