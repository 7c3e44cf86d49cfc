"""``/metrics``: each app's metrics in the Prometheus text format, read at scrape time.

The hot path only bumps plain ints (``HttpMetrics`` below, and the counters the relay, the
consumer, the cache and the use cases keep anyway). A scrape calls the app's readers, each
an async function returning metric families built from those ints or from one cheap query,
and renders them from the app's own registry: two apps may share one process (the embedded
default), so nothing goes into prometheus_client's global registry.

A reader that fails or outlasts its timeout leaves its metrics out of that scrape and shows
as ``metrics_source_up{source="..."} 0``; the others are still answered.

``/metrics`` is exempt from shedding (an overloaded service is when an operator needs it
most), so what it costs is bounded here instead: an async reader (a query on the database,
a question to the broker) is read at most once per ``reuse`` seconds (1 s), its result
shared by every scrape meanwhile, concurrent ones too; the plain counters are read fresh
each time. With ``METRICS_TOKEN`` set, a scrape without ``Authorization: Bearer <token>`` is
401, before anything is read.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orderstack.web.errors import ErrorStyle, error_body
from orderstack.web.limits import LimitCounts

log = structlog.get_logger(__name__)

METRICS_PATH = "/metrics"
# The route label of a request no route matched: an unknown path, or one turned away
# before routing (413, body too large). One value, whatever the path, so that a scan of
# random URLs cannot create a series per path.
UNMATCHED = "unmatched"
# Prometheus' default buckets: from a cached GET (a few ms) to a request stuck on a timeout.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# A source of metric families: plain (counters kept in memory) or async (a query).
Reader = Callable[[], Iterable[Metric] | Awaitable[Iterable[Metric]]]
# A plain one: values a service keeps in memory (a background task's last reading, such as
# stock_drift_units), read fresh at each scrape since reading them costs nothing.
PlainReader = Callable[[], Iterable[Metric]]
# How long an async reader's result is shared by the scrapes that follow: a scrape storm
# costs at most one query (and one broker question) per source and second.
REUSE_SECONDS = 1.0


class _Durations:
    __slots__ = ("counts", "total")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)  # per bucket (not cumulative), the last one +Inf
        self.total = 0.0


class HttpStats:
    """What ``HttpMetrics`` counted: requests by (method, route, status) and their
    durations by (method, route). Read by ``http_families`` at scrape time."""

    def __init__(self, buckets: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.buckets = buckets
        self.requests: dict[tuple[str, str, int], int] = {}
        self.durations: dict[tuple[str, str], _Durations] = {}

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        durations = self.durations.get((method, route))
        if durations is None:
            durations = self.durations[(method, route)] = _Durations(len(self.buckets))
        durations.counts[bisect_left(self.buckets, seconds)] += 1
        durations.total += seconds


class HttpMetrics:
    """Counts every request but ``/metrics`` itself into ``stats``, labelled with its route
    template (``/orders/{order_id}``), never the raw path."""

    def __init__(self, app: ASGIApp, *, stats: HttpStats) -> None:
        self.app, self.stats = app, stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == METRICS_PATH:
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets when the app raises before answering

        async def send_and_see(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_see)
        finally:
            route = scope.get("route")
            method = scope["method"]
            self.stats.record(
                method if method in _METHODS else "other",
                route.path if route is not None else UNMATCHED,
                status,
                time.perf_counter() - started,
            )


def http_families(stats: HttpStats, limits: LimitCounts) -> list[Metric]:
    requests = CounterMetricFamily(
        "http_requests", "HTTP requests answered", labels=["method", "route", "status"]
    )
    for (method, route, status), count in stats.requests.items():
        requests.add_metric([method, route, str(status)], count)
    durations = HistogramMetricFamily(
        "http_request_duration_seconds",
        "Time from a request's arrival to its answer, by route",
        labels=["method", "route"],
    )
    bounds = [*(repr(b) for b in stats.buckets), "+Inf"]
    for (method, route), seen in stats.durations.items():
        cumulative, buckets = 0, []
        for bound, count in zip(bounds, seen.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        durations.add_metric([method, route], buckets, seen.total)
    shed = CounterMetricFamily(
        "requests_shed", "Requests answered 503 OVERLOADED at once (MAX_IN_FLIGHT reached)"
    )
    shed.add_metric([], limits.shed)
    timed_out = CounterMetricFamily(
        "requests_timed_out",
        "Requests answered 503 when their deadline (REQUEST_TIMEOUT_SECONDS) passed",
    )
    timed_out.add_metric([], limits.timed_out)
    gone = CounterMetricFamily(
        "requests_abandoned",
        "Writes cut because their client went away before the answer (dropped before their"
        " COMMIT where they had not reached one)",
    )
    gone.add_metric([], limits.client_gone)
    too_large = CounterMetricFamily(
        "requests_too_large",
        "Requests answered 413 PAYLOAD_TOO_LARGE (MAX_BODY_BYTES), before their body was parsed",
    )
    too_large.add_metric([], limits.too_large)
    edge = CounterMetricFamily(
        "edge_refusals",
        "Requests and connections the server refused before the app saw them, by reason:"
        " head_too_large (431, MAX_HEADER_BYTES), head_timeout and body_timeout (408,"
        " HEADER_TIMEOUT_SECONDS, BODY_TIMEOUT_SECONDS), connections (503, MAX_CONNECTIONS)",
        labels=["reason"],
    )
    for reason, count in limits.edge.items():
        edge.add_metric([reason], count)
    return [requests, durations, shed, timed_out, gone, too_large, edge]


def counter_family(
    name: str, documentation: str, label: str, counts: Mapping[Any, int]
) -> CounterMetricFamily:
    """A counter with one label from a mapping of label value to count (``name`` without
    its ``_total``, which prometheus_client adds)."""
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in counts.items():
        family.add_metric([str(value)], count)
    return family


class Histogram:
    """A histogram with one label, kept as plain counts per bucket (``observe`` is a
    bisect and two additions): shown on ``/metrics`` as ``{name}_bucket``, ``_sum`` and
    ``_count`` by ``family()``. Each of ``values`` is there from the start, at 0."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        buckets: tuple[float, ...],
        values: Iterable[str] = (),
    ) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.buckets = buckets
        self._seen: dict[str, _Durations] = {v: _Durations(len(buckets)) for v in values}

    def observe(self, value: object, seconds: float) -> None:
        key = str(value)
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = _Durations(len(self.buckets))
        seen.counts[bisect_left(self.buckets, seconds)] += 1
        seen.total += seconds

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        bounds = [*(repr(b) for b in self.buckets), "+Inf"]
        for value, seen in self._seen.items():
            cumulative, buckets = 0, []
            for bound, count in zip(bounds, seen.counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric([value], buckets, seen.total)
        return family


# Items per batch: from one alone to the largest batches the settings allow (200 by default).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def batch_size_family(stages: Mapping[str, Mapping[int, int]]) -> HistogramMetricFamily:
    """``batch_size{stage}``: how many items each batch of a stage held, from the counts
    of batches by size that the stage keeps (``Counter[int]``: plain ints on the hot path).
    Each stage is there from the start, at 0."""
    family = HistogramMetricFamily(
        "batch_size",
        "Items per batch, by stage: intake (orders per INSERT batch), relay (outbox rows per"
        " publish), consumer (deliveries per consumer transaction)",
        labels=["stage"],
    )
    bounds = [*(str(b) for b in BATCH_BUCKETS), "+Inf"]
    for stage, sizes in stages.items():
        counts = [0] * (len(BATCH_BUCKETS) + 1)
        total = 0
        for size, batches in list(sizes.items()):
            counts[bisect_left(BATCH_BUCKETS, size)] += batches
            total += size * batches
        cumulative, buckets = 0, []
        for bound, count in zip(bounds, counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        family.add_metric([stage], buckets, total)
    return family


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def db_pool_families(engine: AsyncEngine) -> list[Metric]:
    """Connections of the engine's pool in use now; none for a pool that does not count
    them. The engine may be shared by both services of one process (embedded default)."""
    checkedout = getattr(engine.pool, "checkedout", None)
    if checkedout is None:
        return []
    return [gauge("db_pool_in_use", "Database connections checked out of the pool", checkedout())]


async def ready_families(is_ready: Callable[[], Awaitable[bool]]) -> list[Metric]:
    """``service_ready``: 1 while the replica's ``/readyz`` answers 200, else 0 (the same
    probe round, shared with the probes' callers)."""
    ready = await is_ready()
    return [gauge("service_ready", "1 while this replica's /readyz answers 200", 1 if ready else 0)]


class AppMetrics:
    """One app's registry and the readers it calls at each scrape (see the module docstring)."""

    def __init__(self, timeout: float, reuse: float = REUSE_SECONDS) -> None:
        self._timeout, self._reuse = timeout, reuse
        self._readers: list[tuple[str, Reader]] = []
        # An async reader's last reading (its task, shared) and until when it is reused.
        self._readings: dict[str, tuple[float, asyncio.Task[tuple[list[Metric], bool]]]] = {}
        self._families: list[Metric] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # type: ignore[arg-type]  # a collector: collect() below

    def add(self, source: str, reader: Reader) -> None:
        self._readers.append((source, reader))

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)

    async def _read(self, source: str, reader: Reader) -> tuple[list[Metric], bool]:
        try:
            read = reader()
            if not inspect.isawaitable(read):
                return list(read), True
        except Exception as exc:
            log.warning("metrics source failed", source=source, error=repr(exc))
            return [], False
        now = time.monotonic()
        reading = self._readings.get(source)
        if reading is not None and now < reading[0]:
            if inspect.iscoroutine(read):
                read.close()  # not started: the last reading stands for it
        else:
            task = asyncio.ensure_future(self._bounded(source, read))
            reading = self._readings[source] = (now + self._reuse, task)
        # Shielded: a scrape that goes away does not cancel the reading others wait for.
        return await asyncio.shield(reading[1])

    async def _bounded(
        self, source: str, read: Awaitable[Iterable[Metric]]
    ) -> tuple[list[Metric], bool]:
        try:
            async with asyncio.timeout(self._timeout):
                return list(await read), True
        except Exception as exc:
            log.warning("metrics source failed", source=source, error=repr(exc))
            return [], False

    async def render(self) -> bytes:
        """The text of one scrape. Concurrent scrapes do not mix: each sets the families
        and renders them with no await in between."""
        results = await asyncio.gather(*(self._read(s, r) for s, r in self._readers))
        up = GaugeMetricFamily(
            "metrics_source_up",
            "Whether each source of metrics answered this scrape",
            labels=["source"],
        )
        families: list[Metric] = [up]
        for (source, _), (read, ok) in zip(self._readers, results, strict=True):
            up.add_metric([source], 1 if ok else 0)
            families += read
        self._families = families
        return generate_latest(self.registry)


def add_metrics_route(
    app: FastAPI, metrics: AppMetrics, *, token: str | None = None, style: ErrorStyle = "seed"
) -> None:
    """``GET /metrics``; with ``token``, only for ``Authorization: Bearer <token>`` (else
    401 in ``style``). Not in the OpenAPI document: it is for Prometheus, not for clients."""
    expected = f"Bearer {token}".encode() if token else None

    @app.get(METRICS_PATH, include_in_schema=False)
    async def scrape(request: Request) -> Response:
        if expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                body = error_body(style, 401, "UNAUTHORIZED", "/metrics needs its bearer token")
                return Response(
                    orjson.dumps(body),
                    401,
                    {"www-authenticate": "Bearer"},
                    media_type="application/json",
                )
        # The classic text format (0.0.4), which every Prometheus version reads.
        return Response(await metrics.render(), media_type=CONTENT_TYPE_PLAIN_0_0_4)


__all__ = [
    "AppMetrics",
    "Histogram",
    "HttpMetrics",
    "HttpStats",
    "PlainReader",
    "add_metrics_route",
    "batch_size_family",
    "counter_family",
    "db_pool_families",
    "gauge",
    "http_families",
    "ready_families",
]
