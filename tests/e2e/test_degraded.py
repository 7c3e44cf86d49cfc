"""What users expect while a dependency is down: Redis down means reads fall through to the
database and health says so; the product service down with the product not cached means a
clear 503; no secret shows in logs, errors or /health. The stack runs as an operator
deploys it: its own database and broker users with non-empty passwords (URL-special
characters), in the seed's variables; neither password may show anywhere either."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from harness.processes import ServiceProcess, free_port
from harness.sandbox import Sandbox
from harness.stack import Stack

from .workflows import ONLY_SEED_VARIABLES, create_product, leaks, wait_terminal

pytestmark = pytest.mark.e2e

# Nothing listens there; the password must never be echoed anywhere.
DEAD_REDIS = "redis://:redis-secret-pw@127.0.0.1:{port}/0"


@pytest.fixture(scope="module")
def no_redis(
    make_credentialed_sandbox: Callable[[str], Sandbox],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    sandbox = make_credentialed_sandbox("degraded")
    running = Stack(
        sandbox,
        tmp_path_factory.mktemp("logs"),
        seed_variables=True,
        extra_env={**ONLY_SEED_VARIABLES, "REDIS_URL": DEAD_REDIS.format(port=free_port())},
    ).start()
    try:
        yield running
    finally:
        running.stop()


async def test_redis_down_orders_still_flow_and_health_says_redis_down(no_redis: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, no_redis.product_url, "No cache", 3, 2)
        got = await client.get(f"{no_redis.product_url}/products/{product['id']}")
        assert got.status_code == 200 and got.json()["qty"] == 2
        created = await client.post(
            f"{no_redis.order_url}/orders", json={"product_id": product["id"], "total_price": 3}
        )
        assert created.status_code == 201
        settled = await wait_terminal(client, no_redis.order_url, created.json()["id"])
        assert settled["status"] == "confirmed"
        after = await client.get(f"{no_redis.product_url}/products/{product['id']}")
        assert after.json()["qty"] == 1
        for url in (no_redis.order_url, no_redis.product_url):
            health = await client.get(f"{url}/health")
            assert health.status_code == 503
            assert health.json()["status"] == "unhealthy"
            assert health.json()["services"]["redis"] == "down"
            assert health.json()["services"]["database"] == "up"
            assert leaks(health.text, ["redis-secret-pw", *no_redis.sandbox.passwords]) == []


async def test_product_service_down_and_product_not_cached_is_a_clear_503(
    no_redis: Stack, tmp_path: Path
) -> None:
    env = {
        **no_redis.orders[0].env,
        "REDIS_URL": DEAD_REDIS.format(port=free_port()),
        "PRODUCT_SERVICE_URL": f"http://127.0.0.1:{free_port()}",
        "PRODUCT_CLIENT_TIMEOUT_SECONDS": "0.5",
    }
    lonely = ServiceProcess("order-lonely", ["serve", "order"], env, tmp_path).start()
    try:
        lonely.wait_healthy()
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(
                f"{lonely.url}/orders", json={"product_id": 1, "total_price": 3}
            )
            assert response.status_code == 503
            assert response.json()["code"] == "PRODUCT_SERVICE_UNAVAILABLE"
            assert response.elapsed.total_seconds() < 5  # bounded by timeouts, never hangs
            health = await client.get(f"{lonely.url}/health")
            assert health.status_code == 503
            assert health.json()["services"]["product_service"] == "down"
            assert leaks(health.text, no_redis.sandbox.passwords) == []
    finally:
        lonely.stop()
    log = lonely.log_path.read_text()
    assert leaks(log, ["redis-secret-pw", *no_redis.sandbox.passwords]) == []


def test_no_secret_in_the_service_logs(no_redis: Stack) -> None:
    assert no_redis.sandbox.passwords  # the database and broker users have passwords
    for process in [*no_redis.products, *no_redis.orders]:
        log = process.log_path.read_text()
        assert log, process.name
        assert leaks(log, ["redis-secret-pw", *no_redis.sandbox.passwords]) == []
