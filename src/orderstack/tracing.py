"""Traces (OpenTelemetry), off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

Off, this module imports nothing of OpenTelemetry and each of its hooks costs one test of
a module-level flag. On (``Tracing.from_endpoint``, or a ``Tracing`` around any exporter:
tests give an in-memory one), every service of the process gets a tracer provider of its
own (``service.name`` order-service, product-service), all exporting through one exporter:

- FastAPI, SQLAlchemy, Redis and httpx by their instrumentations. A client span (a query,
  a cache call, an HTTP call) is kept only inside a traced request or batch: the pollers'
  and probes' queries make no root traces of their own (``_inside_traces_sampler`` below).
- Manual spans: ``outbox publish`` (the relay's publish of a batch of rows) and
  ``consume <queue>`` (the consumer's batch), made with ``ServiceTracer.batch_span``.
- The W3C ``traceparent`` of the request (or consumed event) that wrote an outbox row is
  stored with the row (``current_traceparent``) and sent as an AMQP header; a batch span
  links to the context of each of its messages, and a batch of one message is also that
  context's child, so one order's path is one trace.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for the annotations: nothing of OpenTelemetry is imported when off
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

TRACEPARENT_HEADER = "traceparent"
# Requests that make no span: probes and scrapes (regular expressions, searched in the URL).
EXCLUDED_URLS = "/livez,/readyz,/health,/metrics"
# The provider of what the services of one process share (one engine, one Redis client)
# when several run in it (the embedded default).
SHARED_SERVICE_NAME = "orderstack"

# How many ``Tracing`` are alive in the process: the hooks below do nothing while it is 0.
_active = 0


def enabled() -> bool:
    return _active > 0


def current_traceparent() -> str | None:
    """The W3C traceparent of the span the running task is in (None when tracing is off or
    no span is recording)."""
    if not _active:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def _span_context(traceparent: str) -> Any:
    """The remote span context a traceparent names, or None when it does not parse."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {TRACEPARENT_HEADER: traceparent}
    context = trace.get_current_span(TraceContextTextMapPropagator().extract(carrier))
    span_context = context.get_span_context()
    return span_context if span_context.is_valid else None


class ServiceTracer:
    """The manual spans of one service (the relay's and the consumer's)."""

    def __init__(self, provider: TracerProvider) -> None:
        self._tracer = provider.get_tracer("orderstack")

    @contextlib.contextmanager
    def batch_span(
        self,
        name: str,
        traceparents: Sequence[str | None],
        *,
        kind: str = "INTERNAL",
        attributes: dict[str, Any] | None = None,
    ) -> Iterator[Any]:
        """A span around the handling of a batch of messages, linked to the context of
        each (``traceparents``: one per message, None for a message without). A batch of
        one message with a context is also that context's child."""
        from opentelemetry import trace

        contexts = [c for c in (_span_context(tp) for tp in traceparents if tp) if c is not None]
        parent = None
        if len(traceparents) == 1 and contexts:
            parent = trace.set_span_in_context(trace.NonRecordingSpan(contexts[0]))
        with self._tracer.start_as_current_span(
            name,
            context=parent,
            kind=trace.SpanKind[kind],
            links=[trace.Link(c) for c in contexts],
            attributes=attributes,
        ) as span:
            yield span


class Tracing:
    """The tracer providers of the services of one process, exporting through one
    ``exporter``. ``batch``: export in the background (a BatchSpanProcessor); False
    exports each span as it ends (tests)."""

    def __init__(self, exporter: SpanExporter, *, batch: bool = True) -> None:
        global _active
        self._exporter, self._batch = exporter, batch
        self._providers: dict[str, TracerProvider] = {}
        self._instrumented_engines: set[int] = set()
        self._clients_instrumented = False
        self._closed = False
        _active += 1

    @classmethod
    def from_endpoint(cls, endpoint: str | None) -> Tracing | None:
        """Tracing to an OTLP collector over HTTP at ``endpoint`` (as
        OTEL_EXPORTER_OTLP_ENDPOINT gives it: traces go to ``<endpoint>/v1/traces``); None
        (off) without one."""
        if not endpoint:
            return None
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return cls(OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces"))

    def provider(self, service: str) -> TracerProvider:
        found = self._providers.get(service)
        if found is None:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

            found = TracerProvider(
                resource=Resource.create({"service.name": service}),
                sampler=_inside_traces_sampler(),
            )
            processor = BatchSpanProcessor if self._batch else SimpleSpanProcessor
            found.add_span_processor(processor(self._exporter))
            self._providers[service] = found
        return found

    def tracer(self, service: str) -> ServiceTracer:
        return ServiceTracer(self.provider(service))

    def instrument_app(self, app: Any, service: str) -> None:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=self.provider(service),
            excluded_urls=EXCLUDED_URLS,
            exclude_spans=["receive", "send"],  # one span per request, not per ASGI message
        )

    def _shared_provider(self) -> TracerProvider:
        """The provider of what several services of this process may share: the one
        service's when there is only one, else the process's own."""
        services = [name for name in self._providers if name != SHARED_SERVICE_NAME]
        return self.provider(services[0] if len(services) == 1 else SHARED_SERVICE_NAME)

    def instrument_shared(self, engine: Any) -> None:
        """Spans for the queries of ``engine`` (an AsyncEngine), and for Redis and httpx
        calls (process-wide); each once. Called at start-up, once every service of the
        process has its tracer."""
        if id(engine) not in self._instrumented_engines:
            from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
            from opentelemetry.metrics import NoOpMeterProvider

            meter = NoOpMeterProvider().get_meter("orderstack")
            EngineTracer(
                self._shared_provider().get_tracer("opentelemetry.instrumentation.sqlalchemy"),
                engine.sync_engine,
                meter.create_up_down_counter("db.client.connections.usage"),
            )
            self._instrumented_engines.add(id(engine))
        if not self._clients_instrumented:
            from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
            from opentelemetry.instrumentation.redis import RedisInstrumentor

            provider = self._shared_provider()
            HTTPXClientInstrumentor().instrument(tracer_provider=provider)
            RedisInstrumentor().instrument(tracer_provider=provider)
            self._clients_instrumented = True

    def shutdown(self) -> None:
        """Export what is left and stop; idempotent."""
        global _active
        if self._closed:
            return
        self._closed = True
        _active -= 1
        if self._clients_instrumented:
            from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
            from opentelemetry.instrumentation.redis import RedisInstrumentor

            HTTPXClientInstrumentor().uninstrument()
            RedisInstrumentor().uninstrument()
        for provider in self._providers.values():
            provider.shutdown()


def _inside_traces_sampler() -> Any:
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
    from opentelemetry.trace import SpanKind, get_current_span

    class InsideTraces(Sampler):
        """Everything, except a client span (a query, a cache or HTTP call) with no span
        around it: a poller's or a probe's, which would make a trace of one query."""

        def should_sample(  # type: ignore[override]
            self,
            parent_context: Any,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Any = None,
            links: Any = None,
            trace_state: Any = None,
        ) -> SamplingResult:
            parent = get_current_span(parent_context).get_span_context()
            if kind is SpanKind.CLIENT and not parent.is_valid:
                return SamplingResult(Decision.DROP)
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

        def get_description(self) -> str:
            return "InsideTraces"

    return InsideTraces()


__all__ = [
    "ServiceTracer",
    "TRACEPARENT_HEADER",
    "Tracing",
    "current_traceparent",
    "enabled",
]
