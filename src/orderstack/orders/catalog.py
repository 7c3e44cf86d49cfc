"""Product lookup for the order service: the shared cache first, then the product service.

The order service never writes into ``product:{id}``: on a miss it asks the product
service, whose read-through fills the cache with a versioned entry.

It trusts only entries of its product database's epoch (cache/port.py). It cannot read the
product tables, so it learns the epoch from the product service: from the
``X-Database-Epoch`` header of its ``GET /products/{id}`` answers, or, with both services
in one process, from the product service beside it (``KnownEpoch``). Until it knows one,
every lookup asks the product service. The cache's marker is never taken for the epoch:
another database's service sharing the cache by mistake writes its own there.

Concurrent lookups of one product that the cache does not answer share one request to the
product service: a service starting under load (no epoch known yet) sent one per order
until the first answer came back, hundreds in its first second.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol

import httpx
import structlog

from orderstack.batching import Batcher
from orderstack.cache.port import EPOCH_HEADER, CachedProduct, KnownEpoch, ProductCache
from orderstack.logging import current_request_id
from orderstack.orders.domain import CatalogUnavailable

log = structlog.get_logger(__name__)

_BACKOFF_BASE, _BACKOFF_CAP = 0.05, 1.0  # seconds; the ceiling of full-jitter backoff


class ProductCatalog(Protocol):
    async def product_exists(self, product_id: int) -> bool:
        """True / False from the cache or the product service; raises CatalogUnavailable."""

    async def warm(self, product_ids: Sequence[int]) -> tuple[list[int], list[int]]: ...

    async def is_up(self) -> bool: ...

    async def close(self) -> None: ...


class HttpProductCatalog:
    """Asks the product service over HTTP with a per-attempt timeout and bounded retries.

    ``base_urls`` may name several product-service replicas: lookups are spread over them
    and a retry goes to the next one. Between attempts it waits a full-jitter backoff, or
    the ``Retry-After`` of a 503/429, within ``retry_budget`` seconds per lookup; a
    ``Retry-After`` that does not fit in what is left fails the lookup at once. A 503
    ``OVERLOADED`` (the product service shedding load) is never retried: retries would
    add to the load it is shedding.

    Cached entries count only when they carry the product database's epoch: the one the
    product service in this process read (``known_epoch``), else the last one its answers
    named. After the product database is replaced, the product service publishes the new
    epoch in the cache's marker, where the old one's entries stop being trusted; the next
    answer teaches the new epoch.
    """

    def __init__(
        self,
        cache: ProductCache,
        base_urls: list[str],
        *,
        timeout: float = 1.0,
        retries: int = 2,
        retry_budget: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        known_epoch: KnownEpoch | None = None,
        authorization: Callable[[], str] | None = None,
    ) -> None:
        """``authorization``: the ``Authorization`` header of each lookup (a token this
        service signs for itself, when the catalog is not open); None: none sent."""
        self._cache = cache
        self._authorization = authorization
        self._known_epoch = known_epoch or KnownEpoch()
        self._answered_epoch: str | None = None  # from the product service's last answer
        # Concurrent orders' lookups share one cache round trip.
        self._lookups: Batcher[int, CachedProduct | None] = Batcher(self._cached, writers=2)
        # Concurrent misses of one product share one request (``_asked``).
        self._asking: dict[int, asyncio.Task[bool]] = {}
        self._urls = base_urls
        self._next = itertools.cycle(range(len(base_urls)))
        self._retries, self._retry_budget = retries, retry_budget
        self._sleep, self._rng = sleep, rng or random.Random()
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 0.5)),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=50),
            transport=transport,
        )

    @property
    def epoch(self) -> str | None:
        """The product database's epoch as far as this catalog knows; None: not yet."""
        known = self._known_epoch.value
        return known if known is not None else self._answered_epoch

    async def _cached(self, product_ids: Sequence[int]) -> list[CachedProduct | None]:
        epoch = self.epoch
        if epoch is None:  # no entry can be told to be ours yet
            return [None] * len(product_ids)
        return await self._cache.get_many(product_ids, epoch)

    async def product_exists(self, product_id: int) -> bool:
        cached = await self._lookups.submit(product_id)
        if cached is not None:
            return not cached.deleted
        return await self._asked(product_id)

    async def _asked(self, product_id: int) -> bool:
        """The product service's answer for ``product_id``, one request for the callers
        that ask meanwhile. It runs as a task of its own (with the first caller's request
        id), shielded: a caller that gives up (its deadline, its client gone) leaves it
        running for the others."""
        asking = self._asking.get(product_id)
        if asking is None:
            asking = asyncio.create_task(self._ask(product_id))
            self._asking[product_id] = asking

            def done(task: asyncio.Task[bool]) -> None:
                self._asking.pop(product_id, None)
                if not task.cancelled():
                    task.exception()  # retrieved: every caller may have given up

            asking.add_done_callback(done)
        return await asyncio.shield(asking)

    async def _ask(self, product_id: int) -> bool:
        last_error = "no attempt"
        budget = self._retry_budget
        request_id = current_request_id()  # the product service logs under the same id
        headers = {"X-Request-ID": request_id} if request_id else {}
        if self._authorization is not None:
            headers["Authorization"] = self._authorization()
        for attempt in range(self._retries + 1):
            url = f"{self._urls[next(self._next)]}/products/{product_id}"
            retry_after: float | None = None
            try:
                response = await self._client.get(url, headers=headers)
            except httpx.HTTPError as exc:
                last_error = repr(exc)
            else:
                status = response.status_code
                if status == 200:
                    if epoch := response.headers.get(EPOCH_HEADER):
                        self._answered_epoch = epoch
                    return True
                if status == 404:
                    return False
                last_error = f"HTTP {status}"
                if status == 503 and _error_code(response) == "OVERLOADED":
                    last_error = "HTTP 503 OVERLOADED"
                    break
                if status < 500 and status != 429:
                    break  # our request is wrong: retrying will not help
                if status in (429, 503):
                    retry_after = _retry_after(response)
            if attempt == self._retries:
                break
            if retry_after is None:
                wait = self._rng.uniform(0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2**attempt, budget))
            elif retry_after <= budget:
                wait = retry_after
            else:
                last_error += f" (Retry-After {retry_after:g}s exceeds the retry budget)"
                break
            budget -= wait
            await self._sleep(wait)
        log.warning("product service unavailable", product_id=product_id, error=last_error)
        raise CatalogUnavailable(last_error)

    async def warm(self, product_ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """Make sure each product is cached (the product service's read-through caches it);
        returns (cached, not_found). Raises CatalogUnavailable."""
        cached: list[int] = []
        not_found: list[int] = []
        for product_id in dict.fromkeys(product_ids):
            (cached if await self.product_exists(product_id) else not_found).append(product_id)
        return cached, not_found

    async def is_up(self) -> bool:
        for base in self._urls:
            try:
                await self._client.get(f"{base}/health")
                return True  # it answered: reachable, whatever its own dependencies say
            except httpx.HTTPError:
                continue
        return False

    async def close(self) -> None:
        for asking in list(self._asking.values()):
            asking.cancel()
        await self._client.aclose()


def _error_code(response: httpx.Response) -> str | None:
    """The machine code of an error answer (``{"code": ...}``), if it has one."""
    try:
        body = response.json()
    except ValueError:
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date);
    None when it is absent or unreadable."""
    value = response.headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
