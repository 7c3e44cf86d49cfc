"""Held orders on the page at ``/``, in the real headless browser of test_page.py, against
``orderstack dev`` with ORDER_HOLD_SECONDS set (every order the page places is a hold): a
reserved order shows the seconds left, counted down, and a Confirm button, which confirms
it; another, whose hold the test ends (its ``expires_at`` moved to now in the SQLite file:
the embedded default's clock is the process's), is shown expired, its buttons gone and its
units back in the stock shown."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.processes import EmbeddedDev, ServiceProcess
from tests.e2e.test_page import _orders, _read, _stock, _wait_for, browser

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
__all__ = ["browser"]  # the browser fixture of test_page.py

HOLD = 60  # long: a loaded machine confirms in time

_COUNTDOWN = """
const row = document.getElementById("order-" + arguments[0]);
const left = row && row.querySelector(".countdown");
return left ? left.textContent : "";
"""
_BUTTONS = """
const row = document.getElementById("order-" + arguments[0]);
return row ? [...row.querySelectorAll("button")].map((b) => b.textContent) : [];
"""


@pytest.fixture(scope="module")
def held_page(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[EmbeddedDev, ServiceProcess]]:
    site = EmbeddedDev(tmp_path_factory.mktemp("page-holds"), env={"ORDER_HOLD_SECONDS": str(HOLD)})
    dev = site.process().start()
    try:
        dev.wait_healthy()
        yield site, dev
    finally:
        dev.stop()


def _end_hold(database: Path, order_id: int) -> None:
    """The order's hold ends now: its expires_at moved to the present (naive UTC, as the
    service stores it)."""
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    with sqlite3.connect(database, timeout=10) as conn:
        conn.execute("UPDATE orders SET expires_at = ? WHERE id = ?", (now, order_id))


def _seconds_left(text: str) -> int | None:
    parts = text.split()
    return int(parts[2]) if len(parts) == 4 and parts[:2] == ["expires", "in"] else None


@pytest.mark.timeout(120)
def test_a_held_order_counts_down_and_is_confirmed_or_expires(
    held_page: tuple[EmbeddedDev, ServiceProcess], browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    site, dev = held_page
    product = httpx.post(
        f"{site.product_url}/products", json={"name": "Held lamp", "price": 10, "qty": 9}
    ).json()
    browser.get(f"{dev.url}/")
    _wait_for(
        browser,
        "the page ready",
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"),
    )

    def place(quantity: int) -> int:
        _wait_for(
            browser,
            "the product offered",
            lambda d: [
                o.get_attribute("value")
                for o in Select(d.find_element(By.ID, "basket-product")).options
            ],
            lambda values: str(product["id"]) in values,
        )
        Select(browser.find_element(By.ID, "basket-product")).select_by_value(str(product["id"]))
        field = browser.find_element(By.ID, "basket-quantity")
        field.clear()
        field.send_keys(str(quantity), Keys.ENTER)
        before = set(_read(browser, "the orders", _orders))
        browser.find_element(By.ID, "place-order").send_keys(Keys.ENTER)
        shown = _wait_for(browser, "a new order", _orders, lambda o: set(o) - before)
        (order_id,) = set(shown) - before
        _wait_for(
            browser,
            f"order {order_id} reserved",
            _orders,
            lambda o: o[order_id].status == "reserved",
        )
        return order_id

    kept = place(2)
    first = _wait_for(
        browser,
        "a countdown",
        lambda d: _seconds_left(d.execute_script(_COUNTDOWN, kept)),
        lambda left: left is not None and 0 < left <= HOLD,
    )
    assert first is not None
    assert _read(browser, "its buttons", lambda d: d.execute_script(_BUTTONS, kept)) == [
        f"Confirm order {kept}",
        f"Cancel order {kept}",
    ]
    _wait_for(  # counted down, by the second
        browser,
        "the countdown moving",
        lambda d: _seconds_left(d.execute_script(_COUNTDOWN, kept)),
        lambda left: left is not None and left < first,
    )
    browser.find_element(By.CSS_SELECTOR, f"#order-{kept} button").click()
    _wait_for(browser, f"order {kept} confirmed", _orders, lambda o: o[kept].status == "confirmed")
    assert _read(browser, "no countdown", lambda d: d.execute_script(_COUNTDOWN, kept)) == ""
    assert _read(browser, "its buttons", lambda d: d.execute_script(_BUTTONS, kept)) == [
        f"Cancel order {kept}"
    ]

    left_alone = place(3)
    _wait_for(browser, "the stock shown", lambda d: _stock(d, product["id"]), lambda s: s == "4")
    _end_hold(site.workdir / "orderstack.db", left_alone)
    _wait_for(
        browser,
        f"order {left_alone} expired",
        _orders,
        lambda o: o[left_alone].status == "expired",
    )
    assert _read(browser, "no buttons", lambda d: d.execute_script(_BUTTONS, left_alone)) == []
    _wait_for(browser, "its units back", lambda d: _stock(d, product["id"]), lambda s: s == "7")
