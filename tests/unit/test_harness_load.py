"""The load's orders (harness/load.py): every body the chaos runs and the bench send is one
the order service takes, and a total sent is the catalog's exactly (the strict price check
would fail anything else with price_changed)."""

from __future__ import annotations

import random
from collections import Counter
from decimal import Decimal

import orjson

from harness.load import CAMEL, ITEMS, SNAKE, OrderMix, catalog_price
from orderstack.orders.api import OrderCreate

PRICES = {i + 1: catalog_price(i) for i in range(3)}  # 9.99, 12.50, 0.35


def test_the_chaos_mix_sends_every_shape_each_valid_and_at_the_catalog_total() -> None:
    mix = OrderMix.mixed(PRICES, max_lines=5, max_quantity=5)
    rng = random.Random(3)
    spellings: Counter[str] = Counter()
    lines: Counter[int] = Counter()
    twice = with_total = 0
    for _ in range(2000):
        planned = mix.draw(rng)
        body = OrderCreate.model_validate(orjson.loads(mix.body(planned)))
        assert [(line.product_id, line.quantity) for line in body.lines] == list(planned.lines)
        assert all(1 <= q <= 5 for _, q in planned.lines)
        catalog = sum((PRICES[p] * q for p, q in planned.lines), Decimal(0))
        if planned.with_total:
            assert body.total_price == catalog
            with_total += 1
        else:
            assert body.total_price is None
        spellings[planned.spelling] += 1
        lines[len(planned.lines)] += 1
        twice += planned.product_twice
    assert set(spellings) == {SNAKE, CAMEL, ITEMS} and set(lines) == {1, 2, 3, 4, 5}
    assert 0.7 < spellings[SNAKE] / spellings[CAMEL] < 1.4  # about as many of each
    assert twice > 200 and 600 < with_total < 1400
    # What the stock is sized with: 30 % one line, 70 % of 3 lines on average, 3 units each.
    assert mix.expected_units() == (0.3 + 0.7 * 3) * 3
    assert mix.several_lines


def test_the_bench_keeps_the_seeds_body_and_sends_distinct_lines_when_asked() -> None:
    prices = dict.fromkeys(range(1, 6), Decimal(10))
    rng = random.Random(1)
    one = OrderMix.of_lines(prices, 1)
    body = one.body(one.draw(rng))
    assert orjson.loads(body) == {"product_id": orjson.loads(body)["product_id"], "total_price": 10}
    camel = OrderMix.seed(prices, camel_case=True)
    assert set(orjson.loads(camel.body(camel.draw(rng)))) == {"productId", "totalPrice"}
    three = OrderMix.of_lines(prices, 3)
    for _ in range(50):
        planned = three.draw(rng)
        doc = orjson.loads(three.body(planned))
        assert doc["total_price"] == 30 and len(doc["items"]) == 3
        assert len({item["product_id"] for item in doc["items"]}) == 3
    assert not one.several_lines and three.several_lines


def test_a_seed_line_of_several_units_sends_its_quantity_and_total() -> None:
    mix = OrderMix.seed(PRICES, max_quantity=4)
    rng = random.Random(5)
    for _ in range(50):
        planned = mix.draw(rng)
        ((product_id, units),) = planned.lines
        doc = orjson.loads(mix.body(planned))
        assert doc["quantity"] == units
        assert Decimal(str(doc["total_price"])) == PRICES[product_id] * units
