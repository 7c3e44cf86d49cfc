"""The order service's product lookup: the shared cache first, then the product service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal

import httpx
import pytest

from orderstack.cache import inprocess
from orderstack.cache.inprocess import InProcessProductCache
from orderstack.cache.port import CachedProduct, KnownEpoch
from orderstack.messaging.envelope import MalformedEvent
from orderstack.orders.catalog import HttpProductCatalog
from orderstack.orders.domain import CatalogUnavailable
from orderstack.orders.handlers import OrderEventsHandler
from orderstack.orders.service import OrderService
from orderstack.products.domain import ProductNotFound
from orderstack.products.service import ProductService
from tests.unit.fakes import START, Clock, FakeOrderDatabase, FakeProductDatabase


class ProductServiceStub:
    """Answers like the product service: 200 for known products, 404 otherwise, unless
    told to fail; records every request."""

    def __init__(self, known: set[int]) -> None:
        self.known = known
        self.requests: list[str] = []
        self.failures: list[Exception | int] = []  # consumed one per request

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(str(request.url))
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return httpx.Response(failure, json={"statusCode": failure})
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "healthy"})
        product_id = int(request.url.path.rsplit("/", 1)[1])
        if product_id in self.known:
            return httpx.Response(200, json={"id": product_id})
        return httpx.Response(404, json={"statusCode": 404})


@pytest.fixture
def stub() -> ProductServiceStub:
    return ProductServiceStub(known={1, 2})


@pytest.fixture
async def product_cache() -> InProcessProductCache:
    return InProcessProductCache()


@pytest.fixture
async def http_catalog(
    product_cache: InProcessProductCache, stub: ProductServiceStub
) -> AsyncIterator[HttpProductCatalog]:
    catalog = HttpProductCatalog(
        product_cache,
        ["http://products-a:3000", "http://products-b:3000"],
        retries=2,
        transport=httpx.MockTransport(stub),
        known_epoch=KnownEpoch(""),  # the epoch of the entries ``cached`` makes
    )
    yield catalog
    await catalog.close()


def cached(product_id: int, *, deleted: bool = False) -> CachedProduct:
    return CachedProduct(
        id=product_id, version=1, name="x", created_at=START, updated_at=START, deleted=deleted
    )


async def test_cached_product_exists_without_asking_the_product_service(
    http_catalog: HttpProductCatalog, product_cache: InProcessProductCache, stub: ProductServiceStub
) -> None:
    await product_cache.put(cached(9))  # unknown to the stub: the answer must come from the cache

    assert await http_catalog.product_exists(9) is True
    assert stub.requests == []


async def test_cached_tombstone_means_the_product_does_not_exist(
    http_catalog: HttpProductCatalog, product_cache: InProcessProductCache, stub: ProductServiceStub
) -> None:
    await product_cache.put(cached(1, deleted=True))

    assert await http_catalog.product_exists(1) is False
    assert stub.requests == []


async def test_cache_miss_asks_the_product_service(
    http_catalog: HttpProductCatalog, stub: ProductServiceStub
) -> None:
    assert await http_catalog.product_exists(1) is True
    assert await http_catalog.product_exists(404) is False
    assert [u.rsplit("/", 1)[1] for u in stub.requests] == ["1", "404"]


async def test_the_order_service_never_writes_a_stock_figure_on_a_miss(
    http_catalog: HttpProductCatalog, product_cache: InProcessProductCache
) -> None:
    await http_catalog.product_exists(1)

    assert (await product_cache.get_many([1]))[
        0
    ] is None  # only the product service fills product:{id}


async def test_lookups_are_spread_over_the_replicas(
    http_catalog: HttpProductCatalog, stub: ProductServiceStub
) -> None:
    await http_catalog.product_exists(1)
    await http_catalog.product_exists(2)

    assert [httpx.URL(u).host for u in stub.requests] == ["products-a", "products-b"]


async def test_a_failed_attempt_is_retried_on_the_next_replica(
    http_catalog: HttpProductCatalog, stub: ProductServiceStub
) -> None:
    stub.failures = [httpx.ConnectError("refused"), 503]

    assert await http_catalog.product_exists(1) is True
    assert [httpx.URL(u).host for u in stub.requests] == [
        "products-a",
        "products-b",
        "products-a",
    ]


async def test_product_service_down_raises_catalog_unavailable_after_bounded_retries(
    http_catalog: HttpProductCatalog, stub: ProductServiceStub
) -> None:
    stub.failures = [httpx.ConnectError("refused")] * 10

    with pytest.raises(CatalogUnavailable):
        await http_catalog.product_exists(1)

    assert len(stub.requests) == 3  # one attempt and two retries


async def test_a_client_error_is_not_retried(
    http_catalog: HttpProductCatalog, stub: ProductServiceStub
) -> None:
    stub.failures = [400]

    with pytest.raises(CatalogUnavailable):
        await http_catalog.product_exists(1)

    assert len(stub.requests) == 1


# -- cache warm-up (``orderstack cache warmup``): the order service's use case on the real
# catalog, against a product service answering over HTTP --------------------------------


def warming_service(http_catalog: HttpProductCatalog) -> OrderService:
    return OrderService(FakeOrderDatabase().unit_of_work, http_catalog, Clock())


async def test_warm_cache_reports_found_and_not_found_ids_once_each(
    http_catalog: HttpProductCatalog, product_cache: InProcessProductCache, stub: ProductServiceStub
) -> None:
    await product_cache.put(cached(7))  # cached already: the product service is not asked

    found, not_found = await warming_service(http_catalog).warm_cache([2, 404, 7, 2, 1, 404])

    assert (found, not_found) == ([2, 7, 1], [404])
    assert [u.rsplit("/", 1)[1] for u in stub.requests] == ["2", "404", "1"]


async def test_warm_cache_with_the_product_service_down_raises_catalog_unavailable(
    http_catalog: HttpProductCatalog, stub: ProductServiceStub
) -> None:
    stub.failures = [httpx.ConnectError("refused")] * 10

    with pytest.raises(CatalogUnavailable):
        await warming_service(http_catalog).warm_cache([1, 2])

    assert len(stub.requests) == 3  # the first lookup's attempts; the rest are not tried


async def test_is_up_when_any_replica_answers(
    http_catalog: HttpProductCatalog, stub: ProductServiceStub
) -> None:
    stub.failures = [httpx.ConnectError("refused")]

    assert await http_catalog.is_up() is True


async def test_is_down_when_no_replica_answers(
    http_catalog: HttpProductCatalog, stub: ProductServiceStub
) -> None:
    stub.failures = [httpx.ConnectError("refused")] * 2

    assert await http_catalog.is_up() is False


# -- a late product_created cannot reach the product cache through the order service ------


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


async def _sell_out(products: ProductService, product_id: int) -> None:
    await products.update_product(product_id, {"qty": 0})


async def _served_sold_out(products: ProductService, product_id: int) -> None:
    assert (await products.get_product(product_id)).qty == 0


async def _delete(products: ProductService, product_id: int) -> None:
    await products.delete_product(product_id)


async def _served_not_found(products: ProductService, product_id: int) -> None:
    with pytest.raises(ProductNotFound):
        await products.get_product(product_id)


Step = Callable[[ProductService, int], Awaitable[None]]


@pytest.mark.parametrize(
    ("change", "still_served"),
    [
        pytest.param(_sell_out, _served_sold_out, id="no old stock figure back"),
        pytest.param(_delete, _served_not_found, id="no deleted product back"),
    ],
)
async def test_late_product_created_is_rejected_by_the_order_handler(
    change: Step,
    still_served: Step,
    frozen_time: FrozenTime,
    product_db: FakeProductDatabase,
    order_service: OrderService,
    clock: Clock,
) -> None:
    shared = InProcessProductCache(ttl_seconds=300)
    products = ProductService(product_db.unit_of_work, shared, clock)
    created = await products.create_product("Phone", Decimal(500), 10)
    await change(products, created.id)
    frozen_time.now += 301  # the cache entry of the newer version expires
    [late] = product_db.outbox.named("product_created")

    # The order service was down for a while and now receives the old product_created:
    # it is not an event the order service handles, so nothing writes version 1 back.
    with pytest.raises(MalformedEvent, match="unexpected event 'product_created'"):
        OrderEventsHandler(order_service).validate(late)

    assert (await shared.get_many([created.id]))[0] is None
    await still_served(products, created.id)
