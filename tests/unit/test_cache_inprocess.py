"""What only the in-process product cache does; the port's contract, shared with Redis, is
tests/contract/test_cache_contract.py. Also the entry's key and JSON form (cache/port.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from orderstack.cache import inprocess
from orderstack.cache.inprocess import InProcessProductCache
from orderstack.cache.port import CachedProduct, cache_key
from tests.unit.fakes import START


def entry(version: int, qty: int = 5, *, deleted: bool = False) -> CachedProduct:
    return CachedProduct(
        id=1,
        version=version,
        name="Phone",
        price=Decimal("9.99"),
        qty=qty,
        created_at=START,
        updated_at=START,
        deleted=deleted,
    )


class FrozenTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def frozen_time(monkeypatch: pytest.MonkeyPatch) -> FrozenTime:
    fake = FrozenTime()
    monkeypatch.setattr(inprocess, "time", fake)
    return fake


async def test_an_entry_lives_exactly_its_ttl(frozen_time: FrozenTime) -> None:
    cache = InProcessProductCache(ttl_seconds=10)
    await cache.put(entry(5))

    frozen_time.now += 9
    assert (await cache.get_many([1]))[0] == entry(5)
    frozen_time.now += 2
    assert (await cache.get_many([1]))[0] is None


async def test_close_drops_everything() -> None:
    cache = InProcessProductCache()
    await cache.put(entry(1))

    await cache.close()

    assert (await cache.get_many([1]))[0] is None


def test_cache_key_is_the_seeds() -> None:
    assert cache_key(42) == "product:42"


@pytest.mark.parametrize(
    "product",
    [entry(7, qty=3), entry(8, deleted=True), CachedProduct(id=3, version=1)],
)
def test_entry_json_round_trip_is_exact(product: CachedProduct) -> None:
    assert CachedProduct.from_json(product.to_json()) == product
