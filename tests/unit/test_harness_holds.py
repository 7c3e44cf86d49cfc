"""The chaos runs' holds (harness/load.py, harness/confirms.py), without servers: the mix
places its share of holds in every shape, each body valid for the order API with its
``hold_seconds``; a mix without holds draws exactly what it drew before holds; a confirm
comes on either side of its hold's end; and the confirms' answers are checked against the
orders' statuses at rest."""

from __future__ import annotations

import random
from collections import Counter

import orjson
import pytest

from harness.confirms import Confirmer, ConfirmResult, confirm_violations
from harness.load import CAMEL, HELD, ITEMS, SNAKE, OrderMix, _tags, catalog_price
from orderstack.orders.api import OrderCreate

PRICES = {i + 1: catalog_price(i) for i in range(3)}


def test_the_mix_places_its_share_of_holds_in_every_shape() -> None:
    mix = OrderMix.mixed(PRICES, hold_share=0.3, hold_seconds=7)
    rng = random.Random(5)
    held: Counter[str] = Counter()
    count = 2000
    for _ in range(count):
        planned = mix.draw(rng)
        body = orjson.loads(mix.body(planned))
        parsed = OrderCreate.model_validate(body)
        assert [(line.product_id, line.quantity) for line in parsed.lines] == list(planned.lines)
        if planned.hold_seconds is None:
            assert "hold_seconds" not in body and HELD not in _tags(planned)
        else:
            assert planned.hold_seconds == 7 and parsed.hold_seconds == 7
            assert HELD in _tags(planned)
            held[planned.spelling] += 1
    assert set(held) == {SNAKE, CAMEL, ITEMS}
    assert 0.25 < sum(held.values()) / count < 0.35


def test_a_mix_without_holds_draws_what_it_drew_before() -> None:
    """No random draw is spent on holds when there are none: a chaos run's seed reproduces
    the same orders as before holds existed."""
    plain = OrderMix.mixed(PRICES)
    before = OrderMix(
        PRICES,
        lines=(1, 5),
        max_quantity=5,
        seed_share=0.3,
        camel_share=0.5,
        total_share=0.5,
        twice_share=0.25,
    )
    first, second = random.Random(11), random.Random(11)
    drawn = [plain.draw(first) for _ in range(500)]
    assert drawn == [before.draw(second) for _ in range(500)]
    assert all(order.hold_seconds is None for order in drawn)


@pytest.mark.parametrize(("share", "seconds"), [(-0.1, 5), (1.5, 5), (0.2, 4), (0.2, 86401)])
def test_a_mix_refuses_holds_out_of_bounds(share: float, seconds: int) -> None:
    with pytest.raises(ValueError, match="hold"):
        OrderMix.mixed(PRICES, hold_share=share, hold_seconds=seconds)


def test_confirms_come_on_either_side_of_the_hold_end() -> None:
    confirmer = Confirmer(["http://127.0.0.1:1"], random.Random(2))
    delays = [confirmer.delay(5) for _ in range(400)]
    assert all(2.5 <= d <= 7.5 for d in delays)
    before = sum(d < 5 for d in delays)
    assert 100 < before < 300  # about half race an expiry that already happened
    with pytest.raises(ValueError, match="early"):
        Confirmer([], random.Random(), early=2, late=1)


def test_the_confirms_answers_are_checked_against_the_statuses_at_rest() -> None:
    result = ConfirmResult(holds=5, confirmed={1, 2, 3}, expired={4, 5})
    statuses = {1: "confirmed", 2: "cancelled", 3: "expired", 4: "expired", 5: "confirmed"}
    assert confirm_violations(result, statuses) == [
        "order 3: confirm answered 200, now expired",
        "order 5: confirm answered ORDER_EXPIRED, now confirmed",
    ]
    result.problems.append("order 9: confirm's final answer 404 {}")
    result.expired.add(1)
    found = confirm_violations(result, statuses)
    assert found[0] == "order 9: confirm's final answer 404 {}"
    assert "order 1: confirmed and expired both answered" in found
    assert "order 1: confirm answered ORDER_EXPIRED, now confirmed" in found
