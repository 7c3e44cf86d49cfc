"""Open-loop order load: orders are scheduled at a constant rate whether or not earlier
ones answered, and each answer's latency is measured from its scheduled send time, so a
slow system cannot hide its slowness by slowing the client down.

What the orders look like is an ``OrderMix``: the products and their catalog prices, how
many lines an order has, how many units a line asks for, and how the body is written (the
seed's one line, ``product_id``/``quantity``/``total_price`` or its camelCase spelling, or
``items``), with the exact catalog total or none. Every body is valid under the strict
price check (``ORDER_PRICE_CHECK=strict``, the default): a total sent is the sum of each
line's units times its product's price, the harness knowing the prices of the products it
created.

The generator shares the machine with what it measures, so it must be cheap: a lean
keep-alive pool (harness/http_pool.py, about a fifth of aiohttp's CPU per request), each
distinct request's bytes built once, one task per scheduled request.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal

import orjson

from harness.http_pool import HttpPool

NO_ID = "201 without id"  # a 201 whose body has no integer ``id`` (the seed's load test checks)

# How a body names its lines.
SNAKE, CAMEL, ITEMS = "product_id", "productId", "items"
# Distinct requests whose bytes are kept for reuse (a mix of several lines has many).
_CACHED_REQUESTS = 20_000


@dataclass(frozen=True, slots=True)
class PlannedOrder:
    """One order as the client writes it: its lines as sent (a product may be on two),
    the spelling, and whether it sends the catalog total."""

    lines: tuple[tuple[int, int], ...]  # (product id, units), in the body's order
    spelling: str  # SNAKE or CAMEL (the seed's one line), or ITEMS
    with_total: bool
    hold_seconds: int | None = None  # a hold (``hold_seconds`` in the body): reserved first

    @property
    def units(self) -> int:
        return sum(units for _, units in self.lines)

    @property
    def product_twice(self) -> bool:
        return len({pid for pid, _ in self.lines}) < len(self.lines)

    def shape(self) -> str:
        """How the report counts it: ``1 line (product_id)``, ``3 lines (items)``..."""
        n = len(self.lines)
        return f"{n} line{'s' if n > 1 else ''} ({self.spelling})"


@dataclass(frozen=True)
class OrderMix:
    """What the load orders. ``prices``: each product's catalog price (what a total is
    computed from); ``lines``: lines per order, drawn uniformly in [low, high];
    ``max_quantity``: units per line, 1 to it; ``seed_share``: the share of one-line
    orders written the seed's way (``product_id``, ``quantity``, ``total_price``), the rest
    written with ``items`` (one-line ones too); ``camel_share``: of the seed's, the share
    spelled camelCase; ``total_share``: the share sending ``total_price`` (the exact
    catalog total; the others are priced by the catalog); ``twice_share``: of the orders
    of several lines, the share with a product put on two lines on purpose (drawing with
    replacement makes more); ``distinct``: every line on another product (no repeats);
    ``hold_share``: the share placed as holds of ``hold_seconds`` (``reserved`` until their
    client confirms, else expired, docs/api.md)."""

    prices: Mapping[int, Decimal]
    lines: tuple[int, int] = (1, 1)
    max_quantity: int = 1
    seed_share: float = 1.0
    camel_share: float = 0.0
    total_share: float = 1.0
    twice_share: float = 0.0
    distinct: bool = False
    hold_share: float = 0.0
    hold_seconds: int = 5

    def __post_init__(self) -> None:
        low, high = self.lines
        if not 0.0 <= self.hold_share <= 1.0:
            raise ValueError(f"the share of holds must be 0 to 1, got {self.hold_share}")
        if not 5 <= self.hold_seconds <= 86400:
            raise ValueError(f"a hold is 5 to 86400 seconds, got {self.hold_seconds}")
        if not self.prices:
            raise ValueError("an order mix needs products")
        if not 1 <= low <= high <= 100:
            raise ValueError(f"lines per order must be 1 <= low <= high <= 100, got {self.lines}")
        if self.distinct and high > len(self.prices):
            raise ValueError(f"{high} lines on distinct products, but {len(self.prices)} products")
        if not 1 <= self.max_quantity <= 1000:
            raise ValueError(f"units per line must be 1 to 1000, got {self.max_quantity}")

    @classmethod
    def seed(
        cls, prices: Mapping[int, Decimal], *, camel_case: bool = False, max_quantity: int = 1
    ) -> OrderMix:
        """The seed's one-line orders, each with its exact total (one spelling)."""
        return cls(prices, max_quantity=max_quantity, camel_share=1.0 if camel_case else 0.0)

    @classmethod
    def of_lines(cls, prices: Mapping[int, Decimal], lines: int) -> OrderMix:
        """Orders of exactly ``lines`` lines of one unit each, on distinct products, with
        their exact total; ``lines`` 1 is the seed's one line (the bench's default body)."""
        if lines == 1:
            return cls.seed(prices)
        return cls(prices, lines=(lines, lines), seed_share=0.0, distinct=True)

    @classmethod
    def mixed(
        cls,
        prices: Mapping[int, Decimal],
        *,
        max_lines: int = 5,
        max_quantity: int = 5,
        hold_share: float = 0.0,
        hold_seconds: int = 5,
    ) -> OrderMix:
        """The chaos runs' mix: 30 % of the orders are the seed's one line (half of them
        camelCase), the rest ``items`` of 1 to ``max_lines`` lines over the same few
        products (so orders overlap, and some name a product twice: a quarter on purpose,
        more by chance), 1 to ``max_quantity`` units a line; half send the exact total;
        ``hold_share`` of them, of any shape, are holds of ``hold_seconds``."""
        return cls(
            prices,
            lines=(1, max_lines),
            max_quantity=max_quantity,
            seed_share=0.3,
            camel_share=0.5,
            total_share=0.5,
            twice_share=0.25,
            hold_share=hold_share,
            hold_seconds=hold_seconds,
        )

    @property
    def several_lines(self) -> bool:
        """Whether orders of several lines are among those it draws."""
        return self.lines[1] > 1 and self.seed_share < 1.0

    def expected_units(self) -> float:
        """The units an order asks for, on average (to size the stock against demand)."""
        low, high = self.lines
        mean_lines = self.seed_share + (1 - self.seed_share) * (low + high) / 2
        return mean_lines * (1 + self.max_quantity) / 2

    def draw(self, rng: random.Random) -> PlannedOrder:
        order = self._draw_lines(rng)
        # No draw without holds: a run without them draws the orders it always drew.
        if self.hold_share > 0 and rng.random() < self.hold_share:
            return replace(order, hold_seconds=self.hold_seconds)
        return order

    def _draw_lines(self, rng: random.Random) -> PlannedOrder:
        products = list(self.prices)

        def units() -> int:
            return rng.randint(1, self.max_quantity) if self.max_quantity > 1 else 1

        with_total = self.total_share >= 1.0 or rng.random() < self.total_share
        if rng.random() < self.seed_share:
            camel = self.camel_share >= 1.0 or (
                self.camel_share > 0 and rng.random() < self.camel_share
            )
            line = ((rng.choice(products), units()),)
            return PlannedOrder(line, CAMEL if camel else SNAKE, with_total)
        low, high = self.lines
        n = rng.randint(low, high) if low < high else low
        if self.distinct:
            chosen = rng.sample(products, n)
        else:
            chosen = [rng.choice(products) for _ in range(n)]
            if n > 1 and self.twice_share > 0 and rng.random() < self.twice_share:
                i, j = rng.sample(range(n), 2)
                chosen[j] = chosen[i]
        return PlannedOrder(tuple((p, units()) for p in chosen), ITEMS, with_total)

    def total(self, order: PlannedOrder) -> Decimal:
        """The catalog total of ``order``: every line's units times its product's price."""
        return sum((self.prices[pid] * units for pid, units in order.lines), Decimal(0))

    def body(self, order: PlannedOrder) -> bytes:
        """The JSON body of ``order``; its total, when sent, is the catalog's exactly."""
        doc: dict[str, object]
        if order.spelling == ITEMS:
            doc = {"items": [{"product_id": p, "quantity": q} for p, q in order.lines]}
            total_name = "total_price"
        else:
            ((product_id, quantity),) = order.lines
            camel = order.spelling == CAMEL
            doc = {"productId" if camel else "product_id": product_id}
            total_name = "totalPrice" if camel else "total_price"
        if order.with_total:
            doc[total_name] = _number(self.total(order))
        if order.spelling != ITEMS and self.max_quantity > 1:
            doc["quantity"] = order.lines[0][1]
        if order.hold_seconds is not None:
            doc["hold_seconds"] = order.hold_seconds
        return orjson.dumps(doc)


# Catalog prices the harness gives the products it creates, in turn: cents and whole
# amounts, small and large, so that a total computed wrongly shows.
CATALOG_PRICES = tuple(
    Decimal(p) for p in ("9.99", "12.50", "0.35", "149.00", "3.10", "27.45", "1.01", "60.00")
)


def catalog_price(i: int) -> Decimal:
    """The price of the ``i``-th product a run creates."""
    return CATALOG_PRICES[i % len(CATALOG_PRICES)]


def _number(amount: Decimal) -> int | float:
    """An amount as a JSON number: an integer when it is whole (the seed's bodies send
    ``10``), else the float whose shortest form is the amount (``49.95``)."""
    return int(amount) if amount == amount.to_integral_value() else float(amount)


@dataclass
class LoadResult:
    accepted: list[int] = field(default_factory=list)  # ids of the orders that got a 201
    accept_latencies: list[float] = field(default_factory=list)  # seconds, from schedule
    rejected: Counter[str] = field(default_factory=Counter)  # status code or error name
    # Seconds from schedule to every answer that came, whatever its status (a refusal too):
    # what a client waited; a timeout or a connection error is no answer.
    answer_latencies: list[float] = field(default_factory=list)
    sent: int = 0
    # Orders sent by shape (``3 lines (items)``...), and of them: with a product on two
    # lines, with the catalog total.
    shapes: Counter[str] = field(default_factory=Counter)
    accepted_shapes: Counter[str] = field(default_factory=Counter)
    # Each refusal's status and the ``code`` its body gave (``503 OVERLOADED``: shed at the
    # door; ``503 PRODUCT_SERVICE_UNAVAILABLE``: a product not cached and not answered...).
    refusals: Counter[str] = field(default_factory=Counter)

    def add(self, other: LoadResult) -> None:
        """Count ``other``'s orders in this one (a steady load's chunks summed)."""
        self.accepted += other.accepted
        self.accept_latencies += other.accept_latencies
        self.rejected.update(other.rejected)
        self.answer_latencies += other.answer_latencies
        self.sent += other.sent
        self.shapes.update(other.shapes)
        self.accepted_shapes.update(other.accepted_shapes)
        self.refusals.update(other.refusals)

    def render_shapes(self) -> str:
        """``orders by shape (sent/accepted): 1 line (product_id) 120/118, ...``."""
        if not self.shapes:
            return "orders by shape: none sent"
        main = sorted(
            (k for k in self.shapes if k not in (TWICE, WITH_TOTAL, NO_TOTAL, HELD)),
            key=lambda k: (int(k.split()[0]), k),
        )
        parts = [f"{k} {self.shapes[k]}/{self.accepted_shapes[k]}" for k in main]
        extra = [
            f"{k} {self.shapes[k]}/{self.accepted_shapes[k]}"
            for k in (TWICE, WITH_TOTAL, NO_TOTAL, HELD)
            if self.shapes[k]
        ]
        refused = ", ".join(f"{k} x{n}" for k, n in self.refusals.most_common())
        return (
            "orders by shape (sent/accepted): "
            + ", ".join(parts)
            + ("; of them " + ", ".join(extra) if extra else "")
            + (f"\nrefusals by code: {refused}" if refused else "")
        )


TWICE = "with a product on two lines"
WITH_TOTAL = "with the catalog total"
NO_TOTAL = "without a total"
HELD = "held (hold_seconds)"


def _tags(order: PlannedOrder) -> list[str]:
    tags = [order.shape(), WITH_TOTAL if order.with_total else NO_TOTAL]
    if order.product_twice:
        tags.append(TWICE)
    if order.hold_seconds is not None:
        tags.append(HELD)
    return tags


async def drive_orders(
    order_urls: Sequence[str],
    mix: OrderMix,
    *,
    count: int,
    rate: float,
    rng: random.Random,
    connections: int = 256,
    timeout: float = 10.0,
    progress: Callable[[LoadResult], None] | None = None,
    on_accepted: Callable[[str, int, int], None] | None = None,
    on_held: Callable[[str, int, int], None] | None = None,
) -> LoadResult:
    """Post ``count`` orders drawn from ``mix`` at ``rate`` per second, spread over
    ``order_urls`` in turn. ``on_accepted(url, order_id, units)`` is called on each 201, as
    it comes (``units``: the order's units in all, every line); ``on_held(url, order_id,
    hold_seconds)`` after it, on each 201 of a hold (the client that confirms it, or not)."""
    result = LoadResult()
    requests: dict[tuple[str, PlannedOrder], bytes] = {}
    addresses = {url: HttpPool.address(url) for url in order_urls}
    pool = HttpPool(connections)

    def request(url: str, order: PlannedOrder) -> bytes:
        found = requests.get((url, order))
        if found is None:
            found = HttpPool.request_bytes(
                "POST", f"{url}/orders", mix.body(order), "application/json"
            )
            if len(requests) < _CACHED_REQUESTS:
                requests[url, order] = found
        return found

    async def post(url: str, order: PlannedOrder) -> tuple[int, bytes]:
        return await pool.send(addresses[url], request(url, order))

    async def one(due: float, url: str, order: PlannedOrder) -> None:
        try:
            async with asyncio.timeout(timeout):
                try:
                    status, body = await post(url, order)
                except ConnectionRefusedError:
                    # What a load balancer does with a dead replica: try another one.
                    url = rng.choice([u for u in order_urls if u != url] or [url])
                    status, body = await post(url, order)
        except (OSError, TimeoutError) as exc:
            result.rejected[type(exc).__name__] += 1
            return
        result.answer_latencies.append(time.monotonic() - due)
        if status == 201:
            order_id = _order_id(body)
            if order_id is None:
                result.rejected[NO_ID] += 1
                return
            result.accepted.append(order_id)
            result.accept_latencies.append(time.monotonic() - due)
            result.accepted_shapes.update(_tags(order))
            if on_accepted is not None:
                on_accepted(url, order_id, order.units)
            if on_held is not None and order.hold_seconds is not None:
                on_held(url, order_id, order.hold_seconds)
        else:
            result.rejected[str(status)] += 1
            result.refusals[f"{status} {_code(body)}"] += 1

    try:
        in_flight: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        for i in range(count):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            order = mix.draw(rng)
            result.shapes.update(_tags(order))
            task = asyncio.create_task(one(due, order_urls[i % len(order_urls)], order))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            result.sent += 1
            if progress is not None and i % max(1, int(rate)) == 0:
                progress(result)
        if in_flight:
            await asyncio.gather(*in_flight)
    finally:
        pool.close()
    return result


def _code(body: bytes) -> str:
    """The machine ``code`` of an error body (both error styles carry it), or ``-``."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "-"
    code = doc.get("code") if isinstance(doc, dict) else None
    return code if isinstance(code, str) else "-"


def _order_id(body: bytes) -> int | None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    order_id = doc.get("id") if isinstance(doc, dict) else None
    return order_id if isinstance(order_id, int) and not isinstance(order_id, bool) else None
