"""/health and /readyz: one probe round per second at most, whatever the request rate."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from orderstack.web.health import HealthCheck, add_health_routes


class Dependency:
    def __init__(self) -> None:
        self.up, self.calls = True, 0

    async def probe(self) -> bool:
        self.calls += 1
        await asyncio.sleep(0.01)
        return self.up


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _app(check: HealthCheck) -> httpx.AsyncClient:
    app = FastAPI()
    add_health_routes(app, check, ready_on=("database",))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_a_flood_of_health_checks_costs_one_probe_round() -> None:
    database, cache = Dependency(), Dependency()
    check = HealthCheck({"database": database.probe, "redis": cache.probe}, 1.0, ttl=1.0)

    async with _app(check) as client:
        answers = await asyncio.gather(*(client.get("/health") for _ in range(200)))

    assert {a.status_code for a in answers} == {200}
    assert (database.calls, cache.calls, check.rounds) == (1, 1, 1)


async def test_the_result_is_probed_again_once_it_is_older_than_the_ttl() -> None:
    database, clock = Dependency(), Clock()
    check = HealthCheck({"database": database.probe}, 1.0, ttl=1.0, clock=clock)

    async with _app(check) as client:
        first = await client.get("/readyz")
        database.up = False
        clock.now += 0.5
        cached = await client.get("/readyz")
        clock.now += 0.6
        fresh = await client.get("/readyz")

    assert (first.status_code, cached.status_code, fresh.status_code) == (200, 200, 503)
    assert fresh.json() == {"status": "not ready", "services": {"database": "down"}}
    assert database.calls == 2


async def test_readiness_ignores_what_the_replica_does_not_need() -> None:
    database, cache = Dependency(), Dependency()
    cache.up = False
    check = HealthCheck({"database": database.probe, "redis": cache.probe}, 1.0, ttl=0)

    async with _app(check) as client:
        health, ready = await client.get("/health"), await client.get("/readyz")

    assert health.status_code == 503
    assert health.json()["services"] == {"database": "up", "redis": "down"}
    assert ready.status_code == 200


async def test_a_probe_that_hangs_is_down_after_the_timeout() -> None:
    async def hang() -> bool:
        await asyncio.Event().wait()
        return True

    check = HealthCheck({"database": hang}, 0.05, ttl=0)
    async with _app(check) as client:
        ready = await client.get("/readyz")

    assert ready.status_code == 503


async def test_health_is_503_when_a_probe_fails_answers_false_or_hangs() -> None:
    async def up() -> bool:
        return True

    async def down() -> bool:
        return False

    async def broken() -> None:
        raise ConnectionError("refused")

    async def hangs() -> None:
        await asyncio.sleep(10)

    check = HealthCheck(
        {"database": up, "redis": down, "rabbitmq": broken, "product_service": hangs}, 0.05
    )
    async with _app(check) as client:
        response = await client.get("/health")

    assert response.status_code == 503
    assert response.json()["status"] == "unhealthy"
    assert response.json()["services"] == {
        "database": "up",
        "redis": "down",
        "rabbitmq": "down",
        "product_service": "down",
    }


async def test_a_broker_lost_after_it_was_reached_keeps_the_replica_ready() -> None:
    # Orders are still taken without the broker (their events wait in the outbox): taking
    # every replica out of rotation in a broker outage would refuse them all. A replica
    # that never reached its broker (misconfigured, or still starting) is not ready.
    database, broker = Dependency(), Dependency()
    broker.up = False
    check = HealthCheck({"database": database.probe, "rabbitmq": broker.probe}, 1.0, ttl=0)
    app = FastAPI()
    add_health_routes(app, check, ready_on=("database", "rabbitmq"), rides_out={"rabbitmq"})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        never = await client.get("/readyz")
        broker.up = True
        reached = await client.get("/readyz")
        broker.up = False
        lost = await client.get("/readyz")
        database.up = False
        no_database = await client.get("/readyz")

    assert [never.status_code, reached.status_code, lost.status_code] == [503, 200, 200]
    assert lost.json() == {"status": "ready", "services": {"database": "up", "rabbitmq": "down"}}
    assert no_database.status_code == 503
