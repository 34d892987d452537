"""The console in a real headless Chromium (Debian's chromium + chromium-driver, via Selenium).

One browser for the module; the app is served by a real HTTP server on loopback. Each test
saves screenshots under its tmp dir; with WACONV_CONSOLE_SCREENSHOTS=<dir> they are also
copied there (that is how docs/console-*.png are made). In CI (CI set) a missing browser fails
the run; elsewhere these tests are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import update

from tests import payloads as p
from tests.admin.conftest import Admin
from tests.conftest import ADMIN_TOKEN, WABA_ID
from tests.webhooks.helpers import live_server
from waconv.conversions import requestlog
from waconv.models import ConnectorReceipt, Conversion
from waconv.services import Services

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PHONE_WIDTH = 375

pytestmark = [
    pytest.mark.browser,
    # A browser session is slow to start: these run on SQLite only; the pages' SQL runs on
    # both databases in test_console.py.
    pytest.mark.parametrize("db_url", ["sqlite"], indirect=True),
]


def _missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    missing = _missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests must run in CI: {missing}")
        pytest.skip(missing)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--window-size=1280,900",
        "--lang=en-US",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.implicitly_wait(5)
    yield browser
    browser.quit()


@pytest.fixture
def server(app: Flask) -> Iterator[str]:
    with live_server(app) as url:
        yield url


@pytest.fixture
def shoot(driver: Any, tmp_path: Path) -> Callable[[str], Path]:
    copy_to = os.environ.get("WACONV_CONSOLE_SCREENSHOTS")

    def save(name: str) -> Path:
        path = tmp_path / f"console-{name}.png"
        assert driver.save_screenshot(str(path))
        if copy_to:
            shutil.copy(path, Path(copy_to) / path.name)
        return path

    return save


@pytest.fixture
def fresh(driver: Any, server: str) -> Any:
    driver.delete_all_cookies()
    driver.set_window_size(1280, 900)
    driver.get(f"{server}/console/login")
    driver.delete_all_cookies()
    return driver


@pytest.fixture
def failed_purchase(admin: Admin, services: Services, post_webhook: Callable[..., Any]) -> int:
    """A conversation from an ad (June 18th 2025), a sent lead and a failed purchase."""
    post_webhook(p.delivery(p.text("How much are the succulents?", ref=p.referral())))
    lead = admin.mark(wa_id="16505551234", event_name="LeadSubmitted")
    r = admin.mark(
        wa_id="16505551234",
        event_name="Purchase",
        custom_data={"value": 42.5, "currency": "USD"},
    )
    with services.db.transaction() as session:
        session.execute(
            update(Conversion)
            .where(Conversion.id == lead.get_json()["id"])
            .values(status=Conversion.SENT)
        )
        session.execute(
            update(Conversion)
            .where(Conversion.id == r.get_json()["id"])
            .values(
                status=Conversion.FAILED,
                attempts=3,
                last_error_code=100,
                last_error_subcode=2804003,
                last_error_title="Invalid parameter",
                last_error_message="The ctwa_clid is not valid for this WhatsApp Business Account",
                last_error="Meta refused this event's click id: it does not belong to WABA "
                "102290129340398. Check that the conversation came from this account's ad.",
            )
        )
        for n, (status, message) in enumerate([(500, "An unknown error occurred"), (400, None)]):
            requestlog.record_request(
                session,
                requestlog.RequestRecord(
                    at=datetime(2026, 12, 1, 10, n, tzinfo=UTC),
                    waba_id=WABA_ID,
                    destination="graph",
                    events=1,
                    bytes=412,
                    duration_ms=180 + n,
                    http_status=status,
                    fbtrace_id=f"A7xQ2mYp{n}Kd",
                    error_code=1 if status == 500 else 100,
                    error_subcode=None if status == 500 else 2804003,
                    error_message=message or "The ctwa_clid is not valid for this account",
                ),
                [r.get_json()["id"]],
            )
        # A shop's order that matched no conversation, with the longest reason there is.
        session.add(
            ConnectorReceipt(
                connector="shopify",
                webhook_id="b54557e4-bdd9-4b37-8a5f-000000000001",
                topic="orders/paid",
                order_id="820982911946154508",
                event_name="Purchase",
                outcome=ConnectorReceipt.UNMATCHED,
                reason="no conversation with an ad click has the order's phone number or an "
                "email an earlier conversion named",
                received_at=datetime(2026, 12, 1, 10, 5, tzinfo=UTC),
            )
        )
    conversion_id: int = r.get_json()["id"]
    return conversion_id


def wait_for_url(driver: Any, part: str) -> None:
    """Until the browser shows the next page: an element found on the page being left goes
    stale under the test's hands."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 5).until(expected_conditions.url_contains(part))


def log_in(driver: Any, server: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(f"{server}/console/")
    assert driver.current_url == f"{server}/console/login"
    field = driver.find_element(By.ID, "token")
    assert field == driver.switch_to.active_element  # the keyboard starts in the field
    field.send_keys(ADMIN_TOKEN, Keys.ENTER)
    driver.find_element(By.ID, "totals-h")
    assert driver.current_url == f"{server}/console/"


def test_log_in_read_the_report_retry_a_failure_and_log_out(
    fresh: Any, server: str, failed_purchase: int, shoot: Callable[[str], Path]
) -> None:
    from selenium.webdriver.common.by import By

    driver = fresh
    driver.find_element(By.ID, "token").send_keys("wrong")
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    assert "not the admin token" in driver.find_element(By.ID, "login-error").text
    shoot("login-error")

    log_in(driver, server)
    cookie = next(c for c in driver.get_cookies() if c["name"] == "waconv_console")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert ADMIN_TOKEN not in cookie["value"]

    for field, day in (("since", "2025-06-01"), ("until", "2025-06-30")):
        # A date input's typing order follows the browser's locale; set the value instead.
        driver.execute_script(
            "arguments[0].value = arguments[1]", driver.find_element(By.ID, field), day
        )
    driver.find_element(By.CSS_SELECTOR, ".filters button[type=submit]").click()
    wait_for_url(driver, "since=2025-06-01")
    driver.find_element(By.CSS_SELECTOR, ".chart svg.chart-plot")
    row = driver.find_element(By.CSS_SELECTOR, "table.report tbody tr")
    assert "Chat with us" in row.text
    cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
    assert cells[:4] == ["1", "1", "1", "1"]  # clicks, conversations, LeadSubmitted, not sent
    shoot("ads")

    driver.find_element(By.LINK_TEXT, "Conversions").click()
    driver.find_element(By.ID, "status").send_keys("failed")
    driver.find_element(By.CSS_SELECTOR, ".filters button[type=submit]").click()
    wait_for_url(driver, "status=failed")
    driver.find_element(By.LINK_TEXT, f"#{failed_purchase}").click()
    wait_for_url(driver, f"/console/conversions/{failed_purchase}")
    page = driver.find_element(By.TAG_NAME, "main").text
    assert "does not belong to WABA" in page  # the advice
    assert "The ctwa_clid is not valid" in page  # Meta's words
    assert "A7xQ2mYp1Kd" in page  # Meta's answers, from the request log
    shoot("conversion-failed")

    driver.find_element(By.XPATH, "//button[normalize-space()='Retry']").click()
    notice = driver.find_element(By.CSS_SELECTOR, ".notice.ok")
    assert notice.text == f"Conversion {failed_purchase} is queued again."
    assert "pending" in driver.find_element(By.CSS_SELECTOR, "h1 .badge").text
    shoot("conversion-retried")

    driver.find_element(By.XPATH, "//button[normalize-space()='Log out']").click()
    driver.find_element(By.ID, "token")
    assert driver.current_url == f"{server}/console/login"
    assert not [c for c in driver.get_cookies() if c["name"] == "waconv_console"]
    driver.get(f"{server}/console/conversions")
    assert driver.current_url == f"{server}/console/login"


# Lists whose rows read as cards on a phone (the per-ad table scrolls within itself instead).
LIST_PAGES = ("conversions-phone", "webhooks-phone", "orders-phone")


def test_pages_fit_a_phone_and_show_local_times(
    fresh: Any, server: str, failed_purchase: int, shoot: Callable[[str], Path]
) -> None:
    from selenium.webdriver.common.by import By

    driver = fresh
    driver.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": "Asia/Tokyo"})
    log_in(driver, server)
    driver.set_window_size(PHONE_WIDTH, 812)
    width = driver.execute_script("return window.innerWidth")
    pages = {
        "ads-phone": "/console/?since=2025-06-01&until=2025-06-30",
        "conversions-phone": "/console/conversions",
        "conversation-phone": "/console/conversations?q=Sheena",
        "accounts-phone": "/console/accounts",
        "webhooks-phone": "/console/webhooks",
        "orders-phone": "/console/orders",
    }
    for name, path in pages.items():
        driver.get(f"{server}{path}")
        driver.find_element(By.TAG_NAME, "h1")
        scroll = driver.execute_script("return document.documentElement.scrollWidth")
        assert scroll <= width, f"{path} scrolls sideways on a phone ({scroll} > {width})"
        if name in LIST_PAGES:  # every value on screen, none in a table scrolled out of sight
            right = driver.execute_script(
                "return Math.max(0, ...Array.from(document.querySelectorAll('td'),"
                " td => td.getBoundingClientRect().right))"
            )
            assert right <= width, f"{path}: a row's values reach {right} px of {width}"
        shoot(name)
    driver.find_element(By.PARTIAL_LINK_TEXT, "Webhooks")  # the menu is reachable on a phone

    # 2025-06-18T19:46:32Z, the message's time, is 04:46 on June 19th in Tokyo.
    driver.get(f"{server}/console/conversations?q=Sheena")
    driver.find_element(By.PARTIAL_LINK_TEXT, "16505551234").click()
    times = [t.text for t in driver.find_elements(By.TAG_NAME, "time")]
    assert any("19" in t and "04:46" in t for t in times), times
    assert "Asia/Tokyo" in driver.find_element(By.TAG_NAME, "footer").text
    shoot("conversation-phone-detail")

    # A failed conversion on a phone: why it failed and Retry on the first screen, the
    # details below them (they pushed Retry past two screens).
    driver.get(f"{server}/console/conversions/{failed_purchase}")
    retry = driver.find_element(By.XPATH, "//button[normalize-space()='Retry']")
    bottom = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect(); return r.bottom;", retry
    )
    assert bottom <= driver.execute_script("return window.innerHeight"), bottom
    shoot("conversion-phone")


DESKTOP_WIDTH = 1280


def test_every_page_reads_at_phone_and_desktop_width(
    fresh: Any, server: str, failed_purchase: int, shoot: Callable[[str], Path]
) -> None:
    """No page scrolls sideways, and the chart's axis text keeps its shape: the bars stretch
    with the page, the dates and counts do not."""
    from selenium.webdriver.common.by import By

    driver = fresh
    log_in(driver, server)
    pages = {
        "ads": "/console/?since=2025-06-01&until=2025-06-30",
        "conversions": "/console/conversions",
        "conversion": f"/console/conversions/{failed_purchase}",
        "conversations": "/console/conversations?q=Sheena",
        "conversation": "/console/conversations/1",
        "accounts": "/console/accounts",
        "webhooks": "/console/webhooks",
        "orders": "/console/orders",
    }
    label_boxes = {}
    for width in (PHONE_WIDTH, DESKTOP_WIDTH):
        driver.set_window_size(width, 900)
        inner = driver.execute_script("return window.innerWidth")
        for name, path in pages.items():
            driver.get(f"{server}{path}")
            driver.find_element(By.TAG_NAME, "h1")
            scroll = driver.execute_script("return document.documentElement.scrollWidth")
            assert scroll <= inner, f"{path} scrolls sideways at {width} px ({scroll})"
            if name == "ads" and width == PHONE_WIDTH:  # the chart is below the fold
                driver.execute_script("document.getElementById('chart-h').scrollIntoView()")
            shoot(f"{name}-{width}")
        driver.get(f"{server}{pages['ads']}")
        label_boxes[width] = driver.execute_script(
            """
            return Array.from(document.querySelectorAll('.chart text')).map(el => {
              const box = el.getBoundingClientRect();
              return [el.textContent, Math.round(box.width), Math.round(box.height)];
            });
            """
        )
    # The same labels, each the same size, on a phone and on a wide screen.
    assert label_boxes[PHONE_WIDTH] and label_boxes[PHONE_WIDTH] == label_boxes[DESKTOP_WIDTH]
    for text, width, height in label_boxes[DESKTOP_WIDTH]:
        assert 8 <= height <= 20 and width <= 7 * len(text) + 4, (text, width, height)


def test_every_control_has_a_label(fresh: Any, server: str, failed_purchase: int) -> None:

    driver = fresh
    log_in(driver, server)
    for path in [
        "/console/",
        "/console/conversions",
        f"/console/conversions/{failed_purchase}",
        "/console/conversations?q=Sheena",
        "/console/accounts",
        "/console/webhooks",
    ]:
        driver.get(f"{server}{path}")
        unlabeled = driver.execute_script(
            """
            return Array.from(document.querySelectorAll('input:not([type=hidden]), select, button'))
              .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                            && !el.textContent.trim())
              .map(el => el.outerHTML);
            """
        )
        assert unlabeled == [], path
