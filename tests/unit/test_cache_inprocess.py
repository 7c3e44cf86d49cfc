"""The versioned product cache (in-process adapter): a write only lands when it is newer."""

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


async def test_miss_is_none() -> None:
    assert (await InProcessProductCache().get_many([1]))[0] is None


async def test_put_then_get_returns_the_entry() -> None:
    cache = InProcessProductCache()

    await cache.put(entry(1))

    assert (await cache.get_many([1]))[0] == entry(1)


async def test_newer_version_replaces_the_entry() -> None:
    cache = InProcessProductCache()
    await cache.put(entry(1, qty=5))

    await cache.put(entry(2, qty=4))

    assert (await cache.get_many([1]))[0] == entry(2, qty=4)


async def test_older_version_never_overwrites_newer() -> None:
    cache = InProcessProductCache()
    await cache.put(entry(3, qty=2))

    await cache.put(entry(2, qty=3))
    await cache.put(entry(1, qty=5))

    assert (await cache.get_many([1]))[0] == entry(3, qty=2)


async def test_same_version_keeps_the_first_write() -> None:
    cache = InProcessProductCache()
    await cache.put(entry(2, qty=4))

    await cache.put(entry(2, qty=99))

    assert (await cache.get_many([1]))[0] == entry(2, qty=4)


async def test_tombstone_hides_older_versions() -> None:
    cache = InProcessProductCache()
    await cache.put(entry(4, deleted=True))

    await cache.put(entry(3))

    cached = (await cache.get_many([1]))[0]
    assert cached is not None
    assert cached.deleted


async def test_entries_expire_after_the_ttl(frozen_time: FrozenTime) -> None:
    cache = InProcessProductCache(ttl_seconds=10)
    await cache.put(entry(5))

    frozen_time.now += 9
    assert (await cache.get_many([1]))[0] == entry(5)
    frozen_time.now += 2
    assert (await cache.get_many([1]))[0] is None


async def test_an_expired_entry_no_longer_blocks_a_write(frozen_time: FrozenTime) -> None:
    cache = InProcessProductCache(ttl_seconds=10)
    await cache.put(entry(5))
    frozen_time.now += 11

    await cache.put(entry(2))

    assert (await cache.get_many([1]))[0] == entry(2)


async def test_entries_are_kept_per_product() -> None:
    cache = InProcessProductCache()
    await cache.put(entry(9))

    await cache.put(CachedProduct(id=2, version=1, name="Other"))

    assert (await cache.get_many([1]))[0] == entry(9)
    assert ((await cache.get_many([2]))[0]).name == "Other"  # type: ignore[union-attr]


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
