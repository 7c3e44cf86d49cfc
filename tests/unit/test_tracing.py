"""Traces: off (nothing of OpenTelemetry's SDK imported) unless an endpoint is set; on, one
order through both services in one process (the embedded default, in-process bus) is one
trace, with the relay's publish and the consumers' batch spans of both services in it."""

from __future__ import annotations

import subprocess
import sys
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orderstack.bootstrap import order_app, product_app
from orderstack.infrastructure import Infrastructure
from orderstack.messaging.inprocess import InProcessBus
from orderstack.tracing import Tracing
from tests.unit.test_metrics import Services, client, new_product, settings_for


def test_off_by_default_imports_no_tracing_sdk(tmp_path: Path) -> None:
    """(redis-py imports opentelemetry.sdk.metrics itself when the SDK is installed; the
    tracing SDK, the instrumentations and the exporter are ours to import, and only on.)"""
    db = tmp_path / "o.db"
    code = (
        "import sys\n"
        "from orderstack.config import load_settings\n"
        "from orderstack.infrastructure import Infrastructure\n"
        "from orderstack.bootstrap import order_app as o\n"
        "from orderstack.bootstrap import product_app as p\n"
        f"s = load_settings(LOCAL_BUS_PATH=':memory:', DATABASE_URL='sqlite:///{db}')\n"
        "i = Infrastructure.from_settings(s, both_services=True)\n"
        "assert i.tracing is None\n"
        "p(s, i); o(s, i)\n"
        "loaded = [m for m in sys.modules if m.startswith(('opentelemetry.sdk.trace', "
        "'opentelemetry.instrumentation', 'opentelemetry.exporter'))]\n"
        "assert not loaded, loaded\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path)


def describe(span: ReadableSpan) -> str:
    service = span.resource.attributes.get("service.name")
    context, parent = span.context, span.parent
    assert context is not None
    links = [f"{link.context.span_id:016x}" for link in span.links]
    return (
        f"{service:16} {span.name:32} trace={context.trace_id:032x} "
        f"span={context.span_id:016x} "
        f"parent={(f'{parent.span_id:016x}' if parent else '-'):16} links={links}"
    )


async def test_one_order_is_one_trace_across_both_services(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    settings = settings_for(tmp_path)
    embedded = Infrastructure.from_settings(settings, both_services=True)
    infra = replace(embedded, tracing=Tracing(exporter, batch=False))
    async with AsyncExitStack() as stack:
        stack.push_async_callback(infra.close)
        products = product_app(settings, infra)
        orders = order_app(settings, infra)
        for app in (products, orders):
            await stack.enter_async_context(app.router.lifespan_context(app))
        assert isinstance(infra.bus, InProcessBus)
        services = Services(
            await stack.enter_async_context(client(products)),
            await stack.enter_async_context(client(orders)),
            infra.bus,
        )
        product_id = await new_product(services)
        exporter.clear()
        response = await services.orders.post(
            "/orders", json={"product_id": product_id, "total_price": 5}
        )
        assert response.status_code == 201
        assert (await services.settled(response.json()["id"]))["status"] == "confirmed"

    spans = list(exporter.get_finished_spans())
    request = next(s for s in spans if s.name == "POST /orders" and s.parent is None)
    assert request.context is not None
    trace_id = request.context.trace_id
    order_trace = sorted(
        (s for s in spans if s.context is not None and s.context.trace_id == trace_id),
        key=lambda s: s.start_time or 0,
    )
    print("\nthe trace of one order:")
    for span in order_trace:
        print("  " + describe(span))

    by_service = {(str(s.resource.attributes["service.name"]), s.name) for s in order_trace}
    assert ("order-service", "POST /orders") in by_service
    assert ("order-service", "outbox publish") in by_service
    assert ("product-service", "consume product-service.events") in by_service
    assert ("product-service", "outbox publish") in by_service
    assert ("order-service", "consume order-service.events") in by_service
    # Queries inside the request and the batches are in it too (SQLAlchemy instrumentation).
    assert any(s.attributes and "db.system" in str(dict(s.attributes)) for s in order_trace) or any(
        s.kind.name == "CLIENT" for s in order_trace
    )
    # Each batch span links to the context its message carried.
    consume = next(s for s in order_trace if s.name == "consume product-service.events")
    assert consume.links and consume.links[0].context.trace_id == trace_id
    # No client span (a poller's query) makes a trace of its own.
    assert not [s for s in spans if s.parent is None and s.kind.name == "CLIENT"]
