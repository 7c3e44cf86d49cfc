"""``service_ready`` on /metrics says what /readyz says: the same probe round, the same rule
(the database up; the broker up, or up once before). The alert on a replica not ready
(deploy/alerts.yml) reads it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from orderstack.web.health import HealthCheck, add_health_routes, readiness
from orderstack.web.metrics import AppMetrics, add_metrics_route, ready_families
from tests.unit.embedded_apps import running_apps


class Dependency:
    def __init__(self, up: bool = True) -> None:
        self.up = up

    async def probe(self) -> bool:
        return self.up


def ready_value(text: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "service_ready":
                return sample.value
    return None


async def test_service_ready_follows_readyz_through_each_state() -> None:
    database, broker = Dependency(), Dependency(up=False)
    check = HealthCheck({"database": database.probe, "rabbitmq": broker.probe}, 1.0, ttl=0)
    ready_on, rides_out = ("database", "rabbitmq"), {"rabbitmq"}
    app = FastAPI()
    add_health_routes(app, check, ready_on=ready_on, rides_out=rides_out)
    metrics = AppMetrics(timeout=1.0, reuse=0)

    async def is_ready() -> bool:
        return (await readiness(check, ready_on, rides_out))[0]

    metrics.add("readiness", lambda: ready_families(is_ready))
    add_metrics_route(app, metrics)
    seen: list[tuple[int, float | None]] = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for step in ("never reached", "reached", "lost later", "database down"):
            if step == "reached":
                broker.up = True
            elif step == "lost later":
                broker.up = False
            elif step == "database down":
                database.up = False
            status = (await client.get("/readyz")).status_code
            seen.append((status, ready_value((await client.get("/metrics")).text)))

    assert seen == [(503, 0.0), (200, 1.0), (200, 1.0), (503, 0.0)]


async def test_both_embedded_services_show_themselves_ready(tmp_path: Path) -> None:
    async with running_apps(tmp_path) as apps:
        for http in (apps.order_http, apps.product_http):
            value = None
            for _ in range(100):  # the embedded bus is up moments after the start
                value = ready_value((await http.get("/metrics")).text)
                if value == 1.0:
                    break
                await asyncio.sleep(0.02)
            assert value == 1.0
            assert (await http.get("/readyz")).status_code == 200
