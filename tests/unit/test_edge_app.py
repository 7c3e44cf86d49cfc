"""The app's side of the edge: a request takes an in-flight slot only once its body has
arrived (web/limits.py ``InFlightLimit`` reads it first), the body limit still
answers 413; ``/metrics`` reads its queries at most once a second and, with a token, answers
only its holder (web/metrics.py). Driven over ASGI in process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI, Request
from prometheus_client.core import GaugeMetricFamily, Metric
from starlette.types import Message

from orderstack.config import load_settings
from orderstack.serving import edge_limits as edge_limits_of
from orderstack.web.app import base_app
from orderstack.web.limits import LimitCounts
from orderstack.web.metrics import AppMetrics, HttpStats, add_metrics_route, http_families


@asynccontextmanager
async def _no_lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def one_slot_app(tmp_path: Path, counts: LimitCounts) -> FastAPI:
    settings = load_settings(
        DATABASE_URL=f"sqlite:///{tmp_path / 'edge.db'}", MAX_IN_FLIGHT=1, MAX_BODY_BYTES=1024
    )
    app = base_app("t", "seed", settings, _no_lifespan, limit_counts=counts)

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @app.get("/ok")
    async def ok() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def test_a_body_still_on_its_way_holds_no_in_flight_slot(tmp_path: Path) -> None:
    counts = LimitCounts()
    app = one_slot_app(tmp_path, counts)
    arrives = asyncio.Event()
    sent: list[Message] = []

    async def slow_body() -> Message:
        await arrives.wait()
        return {"type": "http.request", "body": b"x" * 10, "more_body": False}

    async def keep(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/echo",
        "raw_path": b"/echo",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), (b"content-length", b"10")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    waiting = asyncio.create_task(app(scope, slow_body, keep))
    await asyncio.sleep(0.05)
    async with client(app) as http:
        # The one slot is free: the waiting request has not taken it.
        assert (await http.get("/ok")).status_code == 200
        assert (await http.post("/echo", content=b"y" * 5)).status_code == 200
        arrives.set()
        await asyncio.wait_for(waiting, 5)
        assert sent[0]["status"] == 200 and sent[1]["body"] == b'{"bytes":10}'
        # The body limit still holds, declared or streamed, and is counted.
        assert (await http.post("/echo", content=b"z" * 2000)).status_code == 413

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b"c" * 400

        assert (await http.post("/echo", content=chunks())).status_code == 413
    assert counts.too_large == 2 and counts.shed == 0


def test_the_app_carries_its_edge_limits_in_its_style(tmp_path: Path) -> None:
    app = one_slot_app(tmp_path, LimitCounts())
    limits = edge_limits_of(app)
    assert limits.max_header_bytes == 16384
    assert b'"code":"REQUEST_TIMEOUT"' in limits.refusal(408, "REQUEST_TIMEOUT", "late")
    assert b'"timestamp"' in limits.refusal(408, "REQUEST_TIMEOUT", "late")  # the seed's shape


async def test_a_scrape_storm_reads_each_query_once_per_reuse_period() -> None:
    queries = 0
    plain = 0

    async def query() -> list[Metric]:
        nonlocal queries
        queries += 1
        await asyncio.sleep(0.02)
        return [GaugeMetricFamily("outbox_unsent_events", "rows", value=queries)]

    def counters() -> list[Metric]:
        nonlocal plain
        plain += 1
        return []

    metrics = AppMetrics(timeout=1.0, reuse=0.3)
    metrics.add("outbox", query)
    metrics.add("http", counters)
    texts = await asyncio.gather(*(metrics.render() for _ in range(50)))
    assert queries == 1 and plain == 50
    assert all(b"outbox_unsent_events 1.0" in text for text in texts)
    assert b"outbox_unsent_events 1.0" in await metrics.render()
    await asyncio.sleep(0.35)
    assert b"outbox_unsent_events 2.0" in await metrics.render()
    assert queries == 2


async def test_a_scrape_that_goes_away_does_not_cancel_the_shared_reading() -> None:
    async def query() -> list[Metric]:
        await asyncio.sleep(0.1)
        return [GaugeMetricFamily("g", "g", value=7)]

    metrics = AppMetrics(timeout=1.0)
    metrics.add("q", query)
    first = asyncio.create_task(metrics.render())
    await asyncio.sleep(0.02)
    first.cancel()
    assert b"g 7.0" in await metrics.render()


async def test_metrics_with_a_token_answers_only_its_holder(tmp_path: Path) -> None:
    app = one_slot_app(tmp_path, LimitCounts())
    metrics = AppMetrics(timeout=1.0)
    metrics.add("http", lambda: http_families(HttpStats(), LimitCounts()))
    add_metrics_route(app, metrics, token="scrape-secret", style="nest")  # noqa: S106
    async with client(app) as http:
        refused = await http.get("/metrics")
        wrong = await http.get("/metrics", headers={"authorization": "Bearer nope"})
        right = await http.get("/metrics", headers={"authorization": "Bearer scrape-secret"})
    assert refused.status_code == wrong.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert refused.json()["statusCode"] == 401
    assert right.status_code == 200 and "requests_too_large_total" in right.text
    assert 'edge_refusals_total{reason="head_timeout"} 0.0' in right.text


def test_the_apps_edge_refusals_are_counted_in_its_limit_counts(tmp_path: Path) -> None:
    counts = LimitCounts()
    app = one_slot_app(tmp_path, counts)
    edge_limits_of(app).refused("body_timeout")
    assert counts.edge["body_timeout"] == 1 and counts.edge["connections"] == 0
