"""The page at ``/`` in a real headless browser: Debian's ``chromium`` driven by Selenium
through Debian's ``chromedriver``, against ``orderstack dev`` (the embedded default) and against
the services as separate processes on the real MariaDB, RabbitMQ and Redis.

Through the page only: a product is created, orders for more units than its stock are
placed (with the keyboard), each is seen to settle ``confirmed`` or ``failed``, and one is
cancelled, its units coming back to the stock shown. The screenshot the README shows is
saved as ``docs/page.png``. Without the browser the test is skipped, and fails under
``CI=true`` (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from harness.processes import EmbeddedDev, ServiceProcess
from tests.conftest import IN_CI

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "page.png"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT_SECONDS = 15
T = TypeVar("T")

# The page re-renders its tables every 2 s: an element found before may be gone (stale)
# by the time it is read. Every read of the page below goes through _read or _wait_for,
# which find the elements again on each try.


def _browser_missing(reason: str) -> None:
    message = (
        f"{reason}: the page test needs Debian's chromium and chromium-driver "
        "(apt-get install -y chromium chromium-driver; .ci/run installs them) and selenium "
        "(pip install -e '.[test]')"
    )
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not os.access(binary, os.X_OK):
            _browser_missing(f"{binary} not found")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        _browser_missing(f"selenium cannot be imported ({exc})")
        raise
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--force-device-scale-factor=1",
        "--hide-scrollbars",
        "--lang=en-US",
        "--window-size=1280,900",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@dataclass(frozen=True)
class Site:
    url: str  # the order service, which serves the page
    dev: ServiceProcess | None  # `orderstack dev`, when the site is the embedded default


@pytest.fixture(scope="module", params=["embedded", "servers"])
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """The page on the embedded default, and on the real servers (the order service and two
    product replicas as separate processes on MariaDB, RabbitMQ and Redis)."""
    if request.param == "servers":
        stack = request.getfixturevalue("stack")
        yield Site(stack.order_url, None)
        return
    dev = EmbeddedDev(tmp_path_factory.mktemp("page")).process().start()
    try:
        dev.wait_healthy()
        yield Site(dev.url, dev)
    finally:
        dev.stop()


def _orders(driver: Any) -> dict[int, tuple[int, str]]:
    """The orders table as the page shows it: id -> (quantity, status)."""
    from selenium.webdriver.common.by import By

    shown = {}
    for row in driver.find_elements(By.CSS_SELECTOR, "#orders tbody tr"):
        cells = row.find_elements(By.CSS_SELECTOR, "th, td")
        shown[int(row.get_attribute("id").removeprefix("order-"))] = (
            int(cells[2].text),
            cells[4].text,
        )
    return shown


def _stock(driver: Any, product_id: int) -> str:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f"#product-{product_id} .stock")
    return str(rows[0].text) if rows else ""


def _wait_for(
    driver: Any,
    what: str,
    read: Callable[[Any], T],
    ok: Callable[[T], object] = bool,
    timeout: float = WAIT_SECONDS,
) -> T:
    """Read the page with ``read`` (finding its elements afresh each time) until ``ok``
    holds of what was read, and return that; a read cut short by a re-render (a stale or
    vanished element) is tried again. Past ``timeout``, fails saying what it last saw."""
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
    )

    deadline = time.monotonic() + timeout
    seen = "nothing read yet"
    while True:
        try:
            value = read(driver)
        except (StaleElementReferenceException, NoSuchElementException) as exc:
            seen = f"{type(exc).__name__} (the page re-rendered under the read)"
        else:
            if ok(value):
                return value
            seen = repr(value)
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not so within {timeout:g}s; last seen: {seen}")
        time.sleep(0.1)


def _read(driver: Any, what: str, read: Callable[[Any], T]) -> T:
    """One read of the page that a re-render does not break (tried again, bounded)."""
    return _wait_for(driver, what, read, lambda _: True)


@pytest.mark.timeout(60)
def test_the_page_places_orders_past_the_stock_and_shows_them_settle(
    site: Site, browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    page = f"{site.url}/"
    if site.dev is not None:  # `make run` (`orderstack dev`) tells a person where it is
        assert f"open {page} " in site.dev.tail(200)
    browser.get(page)
    _wait_for(
        browser,
        "the page ready",
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"),
    )
    assert browser.title.startswith("orderstack")

    # Every control has a label; the status changes go to a live region.
    for control in browser.find_elements(By.CSS_SELECTOR, "input, select"):
        name = control.get_attribute("id")
        assert browser.find_elements(By.CSS_SELECTOR, f"label[for='{name}']"), name
    announcer = browser.find_element(By.ID, "announcer")
    assert announcer.get_attribute("aria-live") == "polite"

    # A product with 3 units, created through the page's form.
    for field, value in (("product-name", "Desk lamp"), ("product-price", "19.99")):
        browser.find_element(By.ID, field).send_keys(value)
    browser.find_element(By.ID, "product-qty").send_keys("3")
    browser.find_element(By.CSS_SELECTOR, "#product-form button[type=submit]").click()
    product_id = _wait_for(
        browser,
        "the new product listed",
        lambda d: int(
            d.find_element(By.XPATH, "//table[@id='products']//tr[td[.='Desk lamp']]")
            .get_attribute("id")
            .removeprefix("product-")
        ),
    )
    assert _read(browser, "its stock", lambda d: _stock(d, product_id)) == "3"
    # The new product is the one the order form now orders.
    selected = _wait_for(
        browser,
        "the order form on the new product",
        lambda d: Select(
            d.find_element(By.ID, "order-product")
        ).first_selected_option.get_attribute("value"),
        lambda value: value == str(product_id),
    )
    assert selected == str(product_id)

    # Orders of 2, 1, 2 and 1 units: 6 units for a stock of 3, each submitted with Enter.
    quantities = (2, 1, 2, 1)
    for placed, quantity in enumerate(quantities, start=1):
        field = browser.find_element(By.ID, "order-quantity")
        field.clear()
        field.send_keys(str(quantity))
        assert browser.find_element(By.ID, "order-total").text == f"{19.99 * quantity:.2f}"
        field.send_keys(Keys.ENTER)
        _wait_for(browser, f"{placed} orders listed", _orders, lambda o, n=placed: len(o) == n)
    assert not browser.find_element(By.ID, "order-error").text

    terminal = {"confirmed", "failed"}
    shown = _wait_for(
        browser,
        "every order settled",
        _orders,
        lambda o: {status for _, status in o.values()} <= terminal,
    )
    assert sorted(q for q, _ in shown.values()) == sorted(quantities)
    statuses = [status for _, status in shown.values()]
    assert "confirmed" in statuses and "failed" in statuses, shown
    confirmed_units = sum(q for q, status in shown.values() if status == "confirmed")
    assert confirmed_units <= 3
    left = str(3 - confirmed_units)
    _wait_for(browser, f"stock {left}", lambda d: _stock(d, product_id), lambda q: q == left)
    # What the page shows is what the API says.
    for order_id, (_, status) in shown.items():
        assert httpx.get(f"{site.url}/orders/{order_id}", timeout=5).json()["status"] == status
    # A person using a screen reader heard the settling (the last message stays visible).
    assert any(word in announcer.text for word in ("confirmed", "failed")), announcer.text

    # Cancel a confirmed order from the keyboard: its units come back.
    order_id = max(i for i, (_, status) in shown.items() if status == "confirmed")
    quantity = shown[order_id][0]

    def press_cancel(d: Any) -> str:
        button = d.find_element(By.CSS_SELECTOR, f"#order-{order_id} button")
        label = str(button.text)
        button.send_keys(Keys.ENTER)  # raises, pressing nothing, if the row re-rendered
        return label

    assert _read(browser, "the cancel button", press_cancel).startswith("Cancel")
    _wait_for(
        browser, f"order {order_id} cancelled", _orders, lambda o: o[order_id][1] == "cancelled"
    )
    _wait_for(
        browser,
        "the cancel announced",
        lambda d: d.find_element(By.ID, "announcer").text,
        lambda text: f"Order {order_id} cancelled" in text,
    )
    assert not browser.find_elements(By.CSS_SELECTOR, f"#order-{order_id} button")
    # Focus did not fall to the page's start: it is on the cancelled order's row.
    focused = browser.switch_to.active_element
    assert focused.get_attribute("id") == "" and focused.text == f"#{order_id}"
    back = str(3 - confirmed_units + quantity)
    _wait_for(browser, f"stock {back}", lambda d: _stock(d, product_id), lambda q: q == back)
    # A failed order offers no cancel.
    orders = _read(browser, "the orders", _orders)
    for failed in (i for i, (_, status) in orders.items() if status == "failed"):
        assert not browser.find_elements(By.CSS_SELECTOR, f"#order-{failed} button")

    if site.dev is None:
        return
    # The whole page, from the top, for the README.
    height = int(browser.execute_script("return document.documentElement.scrollHeight"))
    browser.set_window_size(1280, height + 160)  # the window's frame counts in its height
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(SCREENSHOT)), "no screenshot"
