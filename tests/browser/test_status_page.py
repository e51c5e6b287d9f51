"""``/ui`` in a real headless Chromium: readiness, live download progress, a breaker opening,
the copied report, the token prompt, and a 360 px wide screen."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from app.settings import Settings
from tests.browser.conftest import console_errors
from tests.fakes.servers import ServerThread
from tests.integration.lifecycle.conftest import FAST_DOWNLOADS
from tests.integration.readiness.conftest import TOKEN, Setup, chat, runtime_app
from tests.integration.runtime.conftest import MODEL, RuntimeHarness

pytestmark = pytest.mark.browser

WAIT_S = 30


def wait(driver: WebDriver, condition: Any, timeout: float = WAIT_S) -> Any:
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)
    except TimeoutException:
        logs = driver.get_log("browser")  # type: ignore[attr-defined]  # Chrome's driver has it
        raise AssertionError(f"timed out; browser console: {logs}") from None


def attr(driver: WebDriver, css: str, name: str) -> str | None:
    """Read in one script call: the page re-renders, so element handles go stale."""
    value: str | None = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e && e.getAttribute(arguments[1]);",
        css,
        name,
    )
    return value


def text(driver: WebDriver, css: str) -> str:
    value: str = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css
    )
    return value


def click(driver: WebDriver, css: str) -> None:
    """A real click, retried when a re-render replaced the element in between."""

    def clicked(d: WebDriver) -> bool:
        d.find_element(By.CSS_SELECTOR, css).click()
        return True

    WebDriverWait(
        driver, WAIT_S, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException]
    ).until(clicked)


def test_status_page_download_breaker_and_report(browser: WebDriver, setup: Setup) -> None:
    setup.model("gemma-mini", "llm", "llama_cpp", size=1024 * 1024)
    # The first response stops half-way until released: the page must show it mid-download.
    setup.server.faults.stalls = [512 * 1024]
    settings = setup.settings(downloads={**FAST_DOWNLOADS, "stall_s": 60.0})
    with ServerThread(setup.app(settings)) as keel:
        page = httpx.get(f"{keel.url}/ui")
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "script-src 'sha256-" in csp
        assert "unsafe-inline" not in csp
        assert "connect-src 'self'" in csp

        browser.get(f"{keel.url}/ui")
        wait(browser, lambda d: attr(d, "#cap-llm", "data-status") == "degraded")
        assert "model_absent" in text(browser, "#cap-llm")
        assert attr(browser, "#model-gemma-mini", "data-state") == "absent"

        # A download started from the page, followed live to 100 %.
        click(browser, '#model-gemma-mini [data-action="download"]')
        percent = "#model-gemma-mini .ptext"
        wait(browser, lambda d: 0 < float(attr(d, percent, "data-percent") or 0) < 100)
        assert attr(browser, "#model-gemma-mini", "data-state") == "downloading"
        setup.server.release()  # the connection drops; Keel resumes the rest
        wait(browser, lambda d: attr(d, percent, "data-percent") == "100.0")
        assert "100.0%" in text(browser, percent)
        wait(browser, lambda d: attr(d, "#model-gemma-mini", "data-state") == "installed")
        wait(browser, lambda d: attr(d, "#cap-llm", "data-status") == "available")

        # An outage of the provider opens its breaker; the page shows it with a countdown.
        assert attr(browser, "#breaker-cloud", "data-state") == "closed"
        setup.upstream.faults.down = True
        with httpx.Client(base_url=keel.url, timeout=10) as client:
            for _ in range(3):
                client.post("/v1/chat/completions", json=chat())
        wait(browser, lambda d: attr(d, "#breaker-cloud", "data-state") == "open")
        countdown = text(browser, "#breaker-cloud .countdown")
        assert countdown.endswith(" s")
        wait(browser, lambda d: "breaker:cloud" in text(d, "#timeline"))
        wait(browser, lambda d: attr(d, "#cap-llm", "data-status") == "degraded")

        # "Copy report" puts the text report where the page says it did.
        click(browser, "#copy-report")
        wait(browser, lambda d: attr(d, "#copied-report", "data-copied-at") is not None)
        copied = browser.execute_script("return document.getElementById('copied-report').value")
        assert isinstance(copied, str)
        served = httpx.get(f"{keel.url}/v1/readiness", params={"format": "text"}).text
        report = httpx.get(f"{keel.url}/v1/readiness").json()
    assert copied.startswith("Keel readiness report\n")
    drop_time = [line for line in served.splitlines() if not line.startswith("generated")]
    assert [line for line in copied.splitlines() if not line.startswith("generated")][:8] == (
        drop_time[:8]
    )
    for check in report["checks"]:
        assert f"] {check['name']} " in copied
    assert "provider_circuit_open" in copied
    assert console_errors(browser) == []


def test_token_is_asked_for_and_kept_out_of_the_url(browser: WebDriver, setup: Setup) -> None:
    settings = setup.settings(api_token=TOKEN)
    with ServerThread(setup.app(settings)) as keel:
        browser.get(f"{keel.url}/ui")
        form = wait(browser, lambda d: d.find_element(By.ID, "auth"))
        assert form.is_displayed()
        assert not browser.find_element(By.ID, "app").is_displayed()
        field = browser.find_element(By.ID, "token")
        assert field.get_attribute("type") == "password"
        field.send_keys(TOKEN)
        click(browser, '#auth button[type="submit"]')
        wait(browser, lambda d: attr(d, "#cap-llm", "data-status") is not None)
        assert TOKEN not in browser.current_url
        assert browser.current_url == f"{keel.url}/ui"
        assert TOKEN not in browser.page_source
    assert console_errors(browser) == []


def test_usable_at_360_px(browser: WebDriver, setup: Setup) -> None:
    setup.model("a-model-with-a-rather-long-identifier-0123456789", "llm", "llama_cpp")
    with ServerThread(setup.app()) as keel:
        browser.set_window_size(360, 780)
        browser.get(f"{keel.url}/ui")
        wait(browser, lambda d: attr(d, "#cap-llm", "data-status") is not None)
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#breaker-cloud"))
        inner, scroll = browser.execute_script(
            "return [window.innerWidth, document.documentElement.scrollWidth]"
        )
        assert scroll <= inner, (scroll, inner)  # nothing forces a sideways scroll
        button = browser.find_element(By.CSS_SELECTOR, '[data-action="download"]')
        assert button.is_displayed()
        assert button.rect["x"] + button.rect["width"] <= inner
    assert console_errors(browser) == []


def test_load_and_unload_from_the_page(
    browser: WebDriver, tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    harness = RuntimeHarness(tmp_path, make_settings)
    app = runtime_app(harness, {"load": "slow", "load_s": 0.5}, runtime={"keep_alive_s": 600})
    row = f"#model-{MODEL}"
    with ServerThread(app) as keel:
        browser.get(f"{keel.url}/ui")
        wait(browser, lambda d: attr(d, row, "data-state") == "installed")
        click(browser, f'{row} [data-action="load"]')
        wait(browser, lambda d: attr(d, row, "data-state") == "ready")
        wait(browser, lambda d: "pid " in text(d, row))
        assert "keep-alive" in text(browser, row)
        click(browser, f'{row} [data-action="unload"]')
        wait(browser, lambda d: attr(d, row, "data-state") == "installed")
        wait(browser, lambda d: f"model:{MODEL}" in text(d, "#timeline"))
    assert console_errors(browser) == []


def test_a_failed_download_offers_retry_and_another_folder(
    browser: WebDriver, setup: Setup, tmp_path: Path
) -> None:
    setup.model("gemma-mini", "llm", "llama_cpp")
    setup.server.faults.statuses = [404]  # not retryable: the job fails at once
    elsewhere = tmp_path / "elsewhere" / "models"
    row = "#model-gemma-mini"
    with ServerThread(setup.app()) as keel:
        browser.get(f"{keel.url}/ui")
        wait(browser, lambda d: attr(d, row, "data-state") == "absent")
        click(browser, f'{row} [data-action="download"]')
        wait(browser, lambda d: attr(d, row, "data-state") == "error")
        wait(browser, lambda d: text(d, f'{row} [data-action="download"]') == "Retry")
        click(browser, f'{row} [data-action="storage"]')
        prefilled: list[str | None] = []

        def fill(d: WebDriver) -> bool:
            # Typing focuses the field; from then on re-renders leave its row alone.
            field = d.find_element(By.ID, "folder-gemma-mini")
            prefilled.append(field.get_attribute("value"))
            field.clear()
            field.send_keys(str(elsewhere))
            return field.get_attribute("value") == str(elsewhere)

        WebDriverWait(
            browser,
            WAIT_S,
            ignored_exceptions=[StaleElementReferenceException, NoSuchElementException],
        ).until(fill)
        assert prefilled[0] == str(setup.data_dir.absolute() / "models")
        assert browser.find_element(By.ID, "create-gemma-mini").is_selected()
        click(browser, f'{row} .recover button[type="submit"]')
        wait(browser, lambda d: attr(d, row, "data-state") == "installed")
        storage = httpx.get(f"{keel.url}/v1/lifecycle/storage").json()
    assert storage["root"] == str(elsewhere)
    assert (elsewhere / "gemma-mini" / "gemma-mini.gguf").is_file()
    assert console_errors(browser) == []
