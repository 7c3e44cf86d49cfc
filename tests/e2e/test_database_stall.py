"""A database that holds every write (a table lock under a burst of orders) never hangs a
request: every answer comes within the request deadline, a 201 or a 503 that says what
happened, /livez stays fast, /readyz says the truth; once the lock goes, every order
retried with its Idempotency-Key exists once and settles, and the stock adds up.

Before the request deadline and the metadata-lock bound, each order in flight waited for
as long as the lock was held (``lock_wait_timeout`` defaults to a year), then got 201.
Runs on MariaDB (``LOCK TABLES ... WRITE``: a metadata lock), the MySQL 8 path forced on it,
and PostgreSQL (``LOCK TABLE ... ACCESS EXCLUSIVE``). The global read lock of ``FLUSH
TABLES WITH READ LOCK``, which also holds COMMIT, is in
tests/integration/test_request_deadlines.py (it stalls the whole server, so it is kept
short there).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from harness.sandbox import Sandbox
from harness.stack import Stack

from .workflows import create_product, wait_terminal

pytestmark = pytest.mark.e2e

REQUEST_TIMEOUT = 3.0
LOCK_WAIT = 2
HELD = 8.0  # seconds the lock is held: well past the deadline
ORDERS = 30
STOCK = 1000
# Past the deadline, its answer still has to be written and travel: a generous margin on
# a loaded 2-core box, still far below HELD.
ANSWER_BOUND = REQUEST_TIMEOUT + 2.0


@pytest.fixture(
    scope="module",
    params=["mariadb", "mysql8-path", "postgresql"],
)
def stalled_stack(
    request: pytest.FixtureRequest,
    make_sandbox: Callable[..., Sandbox],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    database = "postgresql" if request.param == "postgresql" else "mariadb"
    extra = {
        "REQUEST_TIMEOUT_SECONDS": str(REQUEST_TIMEOUT),
        "DB_LOCK_WAIT_TIMEOUT_SECONDS": str(LOCK_WAIT),
        "HEALTH_CACHE_SECONDS": "0",
    }
    if request.param == "mysql8-path":
        extra["DB_INSERT_RETURNING"] = "off"
    sandbox = make_sandbox("stall", database)
    running = Stack(sandbox, tmp_path_factory.mktemp("logs"), extra_env=extra).start()
    try:
        running.wait_ready(timeout=30)
        yield running
    finally:
        running.stop()


async def _hold_orders_table(stack: Stack, locked: asyncio.Event, release: asyncio.Event) -> None:
    engine = create_async_engine(stack.sandbox.engine_url)
    try:
        async with engine.connect() as conn:
            await _lock(conn, stack.sandbox.postgresql)
            locked.set()
            await release.wait()
            if stack.sandbox.postgresql:
                await conn.rollback()
            else:
                await conn.execute(sa.text("UNLOCK TABLES"))
    finally:
        locked.set()  # a failure to lock must not leave the test waiting
        await engine.dispose()


async def _lock(conn: AsyncConnection, postgresql: bool) -> None:
    if postgresql:
        await conn.execute(sa.text("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE"))
    else:
        await conn.execute(sa.text("LOCK TABLES orders WRITE"))


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=HELD + 10) as http:
        yield http


async def test_a_locked_orders_table_never_hangs_a_request_and_loses_no_order(
    stalled_stack: Stack, client: httpx.AsyncClient
) -> None:
    stack = stalled_stack
    product = await create_product(client, stack.product_url, "Stalled", 5, STOCK)
    body = {"product_id": product["id"], "total_price": 5}
    # The product is in the order service's cache path before the stall.
    warm = await client.post(f"{stack.order_url}/orders", json=body)
    assert warm.status_code == 201, warm.text

    locked, release = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(_hold_orders_table(stack, locked, release))
    await locked.wait()
    stall_started = time.monotonic()

    async def order(key: str) -> tuple[str, float, httpx.Response]:
        started = time.monotonic()
        answer = await client.post(
            f"{stack.order_url}/orders", json=body, headers={"Idempotency-Key": key}
        )
        return key, time.monotonic() - started, answer

    async def probe(path: str) -> tuple[float, int]:
        started = time.monotonic()
        answer = await client.get(f"{stack.order_url}{path}")
        return time.monotonic() - started, answer.status_code

    try:
        orders = asyncio.gather(*(order(f"stall-{i}") for i in range(ORDERS)))
        await asyncio.sleep(0.5)  # the orders wait on the lock now
        livez = await probe("/livez")
        readyz = await probe("/readyz")
        answers = await orders
        assert time.monotonic() - stall_started < HELD, "the burst outlived the lock"
    finally:
        release.set()
        await holder

    slowest = max(took for _, took, _ in answers)
    print(f"stall of {HELD:g}s: slowest answer {slowest:.2f}s, /livez {livez[0]:.3f}s", end=" ")
    assert slowest < ANSWER_BOUND, f"an answer took {slowest:.1f}s during a {HELD}s stall"
    assert livez[1] == 200 and livez[0] < 1.0, livez
    assert readyz[1] == 503, "the database held every write, and /readyz said ready"
    codes: dict[str, int] = {}
    for _, _, answer in answers:
        assert answer.status_code in (201, 503), answer.text
        if answer.status_code == 503:
            code = answer.json()["code"]
            assert code in ("DATABASE_UNAVAILABLE", "REQUEST_TIMEOUT", "COMMIT_OUTCOME_UNKNOWN")
            assert answer.headers.get("retry-after"), answer.headers
            codes[code] = codes.get(code, 0) + 1
    assert codes, "no request met the stall"
    print(f"answers: {sum(a.status_code == 201 for _, _, a in answers)} x 201, 503 {codes}")

    # The lock is gone: every key retried once gives its one order.
    ids: dict[str, int] = {}
    for key, _, answer in answers:
        if answer.status_code == 201:
            ids[key] = answer.json()["id"]
            continue
        retried = await client.post(
            f"{stack.order_url}/orders", json=body, headers={"Idempotency-Key": key}
        )
        assert retried.status_code in (200, 201), retried.text
        ids[key] = retried.json()["id"]
    assert len(set(ids.values())) == ORDERS  # one order per key, never two

    settled: list[dict[str, Any]] = [
        await wait_terminal(client, stack.order_url, order_id, timeout=30)
        for order_id in [warm.json()["id"], *ids.values()]
    ]
    assert all(o["status"] == "confirmed" for o in settled), settled
    listed = await client.get(f"{stack.order_url}/orders/product/{product['id']}")
    assert len(listed.json()) == ORDERS + 1  # no order beyond the keys' own
    after = await client.get(f"{stack.product_url}/products/{product['id']}")
    assert after.json()["qty"] == STOCK - (ORDERS + 1)
    ready_again = await client.get(f"{stack.order_url}/readyz")
    assert ready_again.status_code == 200
