"""The page at ``/`` in a real headless browser: Debian's ``chromium`` driven by Selenium
through Debian's ``chromedriver``, against ``orderstack dev`` (the embedded default) and against
the services as separate processes on the real MariaDB, RabbitMQ and Redis.

Through the page: two products are created; a basket of several lines is built (a product
added twice, a line's quantity changed), its total is the one the catalog prices shown make,
and the order placed with the keyboard is seen to settle ``confirmed`` at that total; a
basket past the stock fails naming the short product and what is left; a price changed
through the product API after its line went in the basket fails the order with the
catalog's new total as the reason; a confirmed order is cancelled, its units coming back to
the stock shown. The screenshot the README shows is saved as ``docs/page.png``. Without the
browser the test is skipped, and fails under ``CI=true`` (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

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

# The page refreshes its tables every 2 s (and an order's row as it settles): an element
# found before may be gone (stale) by the time it is read. Every read of the page below goes
# through _read or _wait_for, which find the elements again on each try; no element found
# in one try is used in another.


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
    product_url: str  # the product service (a price changes there, behind the page's back)
    dev: ServiceProcess | None  # `orderstack dev`, when the site is the embedded default


@pytest.fixture(scope="module", params=["embedded", "servers"])
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """The page on the embedded default, and on the real servers (the order service and two
    product replicas as separate processes on MariaDB, RabbitMQ and Redis)."""
    if request.param == "servers":
        stack = request.getfixturevalue("stack")
        yield Site(stack.order_url, stack.product_url, None)
        return
    embedded = EmbeddedDev(tmp_path_factory.mktemp("page"))
    dev = embedded.process().start()
    try:
        dev.wait_healthy()
        yield Site(dev.url, embedded.product_url, dev)
    finally:
        dev.stop()


class ShownOrder(NamedTuple):
    """An order's row as the page shows it."""

    lines: tuple[str, ...]  # "2 × Desk lamp at 19.99 = 39.98" (the price once priced)
    total: str
    status: str
    reason: str  # a failed order's reason, in words; "" otherwise


# The tables are read in one script each: a snapshot, which no re-render can cut in two (a
# row read cell by cell could pair a line without its price with the status after it).
_ORDERS = """
return [...document.querySelectorAll("#orders tbody tr")].map((row) => {
  const text = (element) => (element ? element.textContent : "");
  return [row.id, [...row.cells[1].querySelectorAll("li")].map(text), text(row.cells[2]),
    text(row.cells[3].querySelector(".badge")), text(row.cells[3].querySelector(".reason"))];
});
"""
_BASKET = """
return [...document.querySelectorAll("#basket tbody tr")].map((row) => [
  row.cells[0].textContent, row.cells[1].querySelector(".price").textContent,
  row.cells[2].querySelector("input").value, row.cells[3].textContent]);
"""


def _orders(driver: Any) -> dict[int, ShownOrder]:
    """The orders table as the page shows it, by order id."""
    return {
        int(row_id.removeprefix("order-")): ShownOrder(tuple(lines), total, status, reason)
        for row_id, lines, total, status, reason in driver.execute_script(_ORDERS)
    }


def _basket(driver: Any) -> dict[str, tuple[str, str, str]]:
    """The basket's lines: product name -> (unit price, quantity in its field, line total)."""
    return {
        name: (price, quantity, line_total)
        for name, price, quantity, line_total in driver.execute_script(_BASKET)
    }


def _product_cell(driver: Any, product_id: int, name: str) -> str:
    """One cell (``stock``, ``price``) of a product's row, looked up afresh."""
    from selenium.webdriver.common.by import By

    cells = driver.find_elements(By.CSS_SELECTOR, f"#product-{product_id} .{name}")
    return str(cells[0].text) if cells else ""


def _stock(driver: Any, product_id: int) -> str:
    return _product_cell(driver, product_id, "stock")


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


def _focused(driver: Any) -> tuple[str, str]:
    """The focused element's id and text, read in one script: the element (an order's row,
    re-rendered every 2 s) may be replaced between two reads of it."""
    element_id, text = driver.execute_script(
        "const e = document.activeElement; return [e.id, e.innerText.trim()];"
    )
    return str(element_id), str(text)


def _text(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)


def _cents(text: str) -> int:
    return round(float(text) * 100)


@pytest.mark.timeout(120)
def test_the_page_places_baskets_and_shows_them_settle_with_their_reasons(
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
    # The status changes come as Server-Sent Events (GET /orders/events, read with fetch).
    _wait_for(
        browser,
        "the stream of status changes open",
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-stream") == "open",
    )

    def labelled() -> None:
        """Every control has a label (the basket's quantity fields too)."""
        for control in browser.find_elements(By.CSS_SELECTOR, "input, select"):
            name = control.get_attribute("id")
            assert browser.find_elements(By.CSS_SELECTOR, f"label[for='{name}']"), name

    labelled()
    announcer = browser.find_element(By.ID, "announcer")  # never re-rendered
    assert announcer.get_attribute("aria-live") == "polite"

    def create_product(name: str, price: str, qty: int) -> int:
        for field, value in (("product-name", name), ("product-price", price)):
            browser.find_element(By.ID, field).send_keys(value)
        browser.find_element(By.ID, "product-qty").send_keys(str(qty))
        browser.find_element(By.CSS_SELECTOR, "#product-form button[type=submit]").click()
        product_id = _wait_for(
            browser,
            f"{name} listed",
            lambda d: int(
                d.find_element(By.XPATH, f"//table[@id='products']//tr[td[.='{name}']]")
                .get_attribute("id")
                .removeprefix("product-")
            ),
        )
        # The new product is the one the basket's form now offers.
        _wait_for(
            browser,
            f"the basket's form on {name}",
            lambda d: Select(
                d.find_element(By.ID, "basket-product")
            ).first_selected_option.get_attribute("value"),
            lambda value: value == str(product_id),
        )
        assert _read(browser, f"{name}'s stock", lambda d: _stock(d, product_id)) == str(qty)
        return product_id

    lamp = create_product("Desk lamp", "19.99", 3)
    chair = create_product("Chair", "45.50", 10)

    def add(product_id: int, quantity: int, *, enter: bool = True) -> None:
        Select(browser.find_element(By.ID, "basket-product")).select_by_value(str(product_id))
        field = browser.find_element(By.ID, "basket-quantity")
        field.clear()
        field.send_keys(str(quantity))
        if enter:
            field.send_keys(Keys.ENTER)
        else:
            browser.find_element(By.CSS_SELECTOR, "#basket-form button[type=submit]").click()
        assert not _text(browser, "basket-error")

    def place(expected: int) -> tuple[int, ShownOrder]:
        """Place the basket from the keyboard; the new order, once settled."""
        before = set(_read(browser, "the orders", _orders))
        browser.find_element(By.ID, "place-order").send_keys(Keys.ENTER)
        shown = _wait_for(
            browser,
            f"{expected} orders listed",
            _orders,
            lambda o: len(o) == expected,
        )
        assert not _text(browser, "order-error")
        (order_id,) = set(shown) - before
        settled = _wait_for(
            browser,
            f"order {order_id} settled",
            _orders,
            lambda o: o[order_id].status in {"confirmed", "failed"},
        )
        return order_id, settled[order_id]

    def catalog_price(product_id: int) -> str:
        return _read(browser, "a price", lambda d: _product_cell(d, product_id, "price"))

    # A basket of several lines: a lamp, two chairs, a lamp again (one line of 2), then the
    # chairs' line changed to 1.
    add(lamp, 1)
    add(chair, 2, enter=False)
    add(lamp, 1)
    _wait_for(browser, "two lines", _basket, lambda b: b.get("Desk lamp", ("", ""))[1] == "2")
    chairs = browser.find_element(By.ID, f"basket-quantity-{chair}")
    chairs.clear()
    chairs.send_keys("1")
    expected = 2 * _cents(catalog_price(lamp)) + _cents(catalog_price(chair))
    assert expected == 2 * 1999 + 4550
    total = _wait_for(
        browser,
        "the basket's total",
        lambda d: _text(d, "basket-total"),
        lambda text: text == f"{expected / 100:.2f}",
    )
    assert _read(browser, "the basket", _basket) == {
        "Desk lamp": ("19.99", "2", "39.98"),
        "Chair": ("45.50", "1", "45.50"),
    }
    labelled()
    first, shown = place(1)
    assert shown == ShownOrder(
        ("2 × Desk lamp at 19.99 = 39.98", "1 × Chair at 45.50 = 45.50"), total, "confirmed", ""
    ), shown
    answer = httpx.get(f"{site.url}/orders/{first}", timeout=5).json()
    assert answer["status"] == "confirmed" and answer["total_price"] == 85.48, answer
    assert [(i["product_id"], i["quantity"]) for i in answer["items"]] == [(lamp, 2), (chair, 1)]
    # The ordered lines left the basket.
    assert _wait_for(browser, "the basket emptied", _basket, lambda b: not b) == {}
    _wait_for(browser, "the lamps taken", lambda d: _stock(d, lamp), lambda q: q == "1")
    _wait_for(browser, "the chair taken", lambda d: _stock(d, chair), lambda q: q == "9")

    # Past the stock: 2 lamps (1 left) and a chair. Nothing is taken, the lamp is named.
    add(lamp, 2)
    add(chair, 1)
    short, shown = place(2)
    assert shown.status == "failed", shown
    assert shown.reason == "not enough stock: Desk lamp (2 asked, 1 left)", shown
    assert shown.lines == ("2 × Desk lamp", "1 × Chair")
    assert httpx.get(f"{site.url}/orders/{short}", timeout=5).json()["failure"]["lines"] == [
        {"product_id": lamp, "requested": 2, "available": 1}
    ]
    _wait_for(
        browser,
        "the failure announced",
        lambda d: d.find_element(By.ID, "announcer").text,
        lambda text: f"Order {short} failed: not enough stock" in text,
    )
    assert _read(browser, "stock", lambda d: (_stock(d, lamp), _stock(d, chair))) == ("1", "9")

    # A line removed from the keyboard; a reload keeps the basket and the orders.
    add(lamp, 1)
    add(chair, 1)
    _wait_for(browser, "two lines", _basket, lambda b: len(b) == 2)
    browser.find_element(By.CSS_SELECTOR, f"#basket-line-{lamp} button").send_keys(Keys.ENTER)
    assert _read(browser, "the basket", _basket) == {"Chair": ("45.50", "1", "45.50")}
    # Focus moved to the line that took its place.
    assert _read(browser, "the focused control", _focused)[1].startswith("Remove")
    # A line without a valid quantity has no total, and the basket is not placed.
    chairs = browser.find_element(By.ID, f"basket-quantity-{chair}")
    chairs.clear()
    chairs.send_keys("0")
    _wait_for(browser, "no total", lambda d: _text(d, "basket-total"), "–".__eq__)
    assert chairs.get_attribute("aria-invalid") == "true"
    browser.find_element(By.ID, "place-order").send_keys(Keys.ENTER)
    assert _text(browser, "order-error").startswith("Give each line of the basket a quantity")
    chairs.clear()
    chairs.send_keys("1")
    _wait_for(browser, "the total back", lambda d: _text(d, "basket-total"), "45.50".__eq__)
    browser.refresh()
    _wait_for(
        browser,
        "the page ready again",
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"),
    )
    announcer = browser.find_element(By.ID, "announcer")
    assert _read(browser, "the basket", _basket) == {"Chair": ("45.50", "1", "45.50")}
    assert set(_read(browser, "the orders", _orders)) == {first, short}

    # A price changed after its line went in the basket: the basket keeps the price it
    # showed (and says the list's moved), and the order fails with the catalog's total.
    changed = httpx.patch(f"{site.product_url}/products/{chair}", json={"price": 50}, timeout=5)
    assert changed.status_code == 200, changed.text
    _wait_for(
        browser, "the new price listed", lambda d: _product_cell(d, chair, "price"), "50.00".__eq__
    )
    _wait_for(
        browser,
        "the basket saying the list moved",
        lambda d: d.find_element(By.CSS_SELECTOR, f"#basket-line-{chair} .price-note").text,
        lambda text: text == "list now 50.00",
    )
    assert _read(browser, "the basket", _basket) == {"Chair": ("45.50", "1", "45.50")}
    assert _text(browser, "basket-total") == "45.50"
    repriced, shown = place(3)
    assert (shown.status, shown.reason, shown.total) == (
        "failed",
        "price changed: now 50.00",
        "45.50",
    ), shown
    failure = httpx.get(f"{site.url}/orders/{repriced}", timeout=5).json()["failure"]
    assert failure["reason"] == "price_changed" and failure["catalog_total"] == 50.0, failure
    # Added again, the chair takes the new price, and the order goes through.
    add(chair, 1)
    again, shown = place(4)
    assert (shown.status, shown.total, shown.lines) == (
        "confirmed",
        "50.00",
        ("1 × Chair at 50.00 = 50.00",),
    ), shown
    _wait_for(browser, "the chair taken", lambda d: _stock(d, chair), lambda q: q == "8")

    # Cancel the first order from the keyboard: its units come back.
    def press_cancel(d: Any) -> str:
        button = d.find_element(By.CSS_SELECTOR, f"#order-{first} button")
        label = str(button.text)
        button.send_keys(Keys.ENTER)  # raises, pressing nothing, if the row re-rendered
        return label

    assert _read(browser, "the cancel button", press_cancel).startswith("Cancel")
    _wait_for(
        browser, f"order {first} cancelled", _orders, lambda o: o[first].status == "cancelled"
    )
    _wait_for(
        browser,
        "the cancel announced",
        lambda d: d.find_element(By.ID, "announcer").text,
        lambda text: f"Order {first} cancelled" in text,
    )
    assert not browser.find_elements(By.CSS_SELECTOR, f"#order-{first} button")
    # Focus did not fall to the page's start: it is on the cancelled order's row.
    focused = _read(browser, "the focused cell", _focused)
    assert focused == ("", f"#{first}"), focused
    _wait_for(browser, "the lamps back", lambda d: _stock(d, lamp), lambda q: q == "3")
    _wait_for(browser, "the chair back", lambda d: _stock(d, chair), lambda q: q == "9")
    # A failed order offers no cancel; what the page shows is what the API says.
    orders = _read(browser, "the orders", _orders)
    for order_id, order in orders.items():
        if order.status == "failed":
            assert not browser.find_elements(By.CSS_SELECTOR, f"#order-{order_id} button")
        answer = httpx.get(f"{site.url}/orders/{order_id}", timeout=5).json()
        assert answer["status"] == order.status

    if site.dev is None:
        return
    # The whole page, from the top, for the README, with a line in the basket.
    add(lamp, 1)
    _wait_for(browser, "a line in the basket", _basket, lambda b: "Desk lamp" in b)
    height = int(browser.execute_script("return document.documentElement.scrollHeight"))
    browser.set_window_size(1280, height + 160)  # the window's frame counts in its height
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(SCREENSHOT)), "no screenshot"


def test_with_authentication_on_the_page_sends_the_token_pasted_into_it(
    browser: Any, tmp_path: Path
) -> None:
    """The page as a single-page app with authentication on (the embedded default with a
    key): without a token creating a product is refused and said; with a staff token pasted
    into the page (kept in the tab's sessionStorage, sent on every call, the relayed
    product calls included) the product is created; forgetting the token refuses again."""
    from selenium.webdriver.common.by import By

    from orderstack.config import load_settings
    from orderstack.web.auth import Role, mint

    key = "page-signing-key-" + "p" * 24  # a throwaway test key
    embedded = EmbeddedDev(tmp_path, env={"AUTH_SIGNING_KEY": key})
    dev = embedded.process().start()
    try:
        dev.wait_healthy()
        browser.get(f"{dev.url}/")
        _wait_for(
            browser,
            "the page ready",
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"),
        )

        def create(name: str) -> None:
            for field, value in (
                ("product-name", name),
                ("product-price", "3"),
                ("product-qty", "4"),
            ):
                element = browser.find_element(By.ID, field)
                element.clear()
                element.send_keys(value)
            browser.find_element(By.CSS_SELECTOR, "#product-form button[type=submit]").click()

        def use(token: str) -> None:
            browser.find_element(By.ID, "token").send_keys(token)
            browser.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()

        def stream(d: Any) -> str | None:
            return d.find_element(By.TAG_NAME, "body").get_attribute("data-stream")

        create("Refused lamp")
        _wait_for(
            browser, "the refusal said", lambda d: _text(d, "product-error"), lambda t: "401" in t
        )
        assert stream(browser) == "down"  # the status stream refused too: the page polls
        use(mint(load_settings(AUTH_SIGNING_KEY=key), "clerk", Role.STAFF))
        assert "in use" in _text(browser, "token-note")
        # The stream opens with the token at once (in its header, never in the URL).
        _wait_for(browser, "the stream open with the token", stream, lambda s: s == "open", 3)
        assert browser.find_element(By.ID, "token").get_attribute("value") == ""  # not left shown
        create("Guarded lamp")
        _wait_for(
            browser,
            "the product listed",
            lambda d: d.find_elements(
                By.XPATH, "//table[@id='products']//tr[td[.='Guarded lamp']]"
            ),
        )
        products = httpx.get(f"{embedded.product_url}/products", timeout=5).json()["items"]
        assert [p["name"] for p in products] == ["Guarded lamp"]  # the refused one never was

        browser.find_element(By.ID, "token-forget").click()
        create("Refused again")
        _wait_for(
            browser, "refused again", lambda d: _text(d, "product-error"), lambda t: "401" in t
        )
    finally:
        dev.stop()
