"""Stock drift, measured in the background: ``stock_drift_units`` on the product service's
``/metrics``.

``orderstack reconcile`` proves the ledger when an operator runs it; this gauge says between
runs whether it would find stock drift, so that an alert can fire on it. Each product's
stock must be ``sum(stock_adjustments.delta) - units held by its confirmed reservations``
(a hold, an order ``reserved``, is a confirmed reservation on this side); ``ledger_query``
is the one set-based statement that finds the products where it is not (or whose stock is
below zero), shared with the command so that both measure the same thing.

The statement scans every product, its ledger and its reservation lines (about a second
for 100,000 products on MariaDB): far too much for a scrape, which must stay cheap. So a
periodic task runs it at most every ``STOCK_DRIFT_CHECK_SECONDS`` (0: never) and keeps its
reading; a scrape only turns that reading into gauges. Until the first round has answered,
no gauge is shown (a missing series, not a false 0), and
``stock_drift_checked_timestamp_seconds`` says how old the reading is: a round that fails
(the database away, a statement past ``DB_STATEMENT_TIMEOUT_SECONDS``) is logged and leaves
the last reading, growing older. One statement reads one snapshot on each database, so a
stock update and its ledger entry, committed together, are never seen apart: an order
being settled is not drift.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import structlog
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orderstack.periodic import PeriodicTask
from orderstack.products.domain import ReservationOutcome
from orderstack.products.repository import (
    products,
    reservation_lines,
    stock_adjustments,
    stock_reservations,
)

log = structlog.get_logger(__name__)


def ledger_query(only: Sequence[int] | None = None) -> sa.Select[Any]:
    """Every product whose stock is not what its ledger says, or below zero: one statement,
    the ledger and the held units each summed per product (GROUP BY) and joined. Columns:
    ``id, qty, deleted_at, ledger, held``."""
    sums = sa.select(
        stock_adjustments.c.product_id, sa.func.sum(stock_adjustments.c.delta).label("total")
    ).group_by(stock_adjustments.c.product_id)
    held = (
        sa.select(
            reservation_lines.c.product_id, sa.func.sum(reservation_lines.c.quantity).label("held")
        )
        .select_from(
            reservation_lines.join(
                stock_reservations, stock_reservations.c.order_id == reservation_lines.c.order_id
            )
        )
        .where(stock_reservations.c.outcome == ReservationOutcome.CONFIRMED.value)
        .group_by(reservation_lines.c.product_id)
    )
    query_where: list[sa.ColumnElement[bool]] = []
    if only is not None:
        sums = sums.where(stock_adjustments.c.product_id.in_(only))
        held = held.where(reservation_lines.c.product_id.in_(only))
        query_where.append(products.c.id.in_(only))
    ledger_sums, held_sums = sums.subquery("ledger"), held.subquery("held")
    ledger = sa.func.coalesce(ledger_sums.c.total, 0)
    holding = sa.func.coalesce(held_sums.c.held, 0)
    return (
        sa.select(
            products.c.id,
            products.c.qty,
            products.c.deleted_at,
            ledger.label("ledger"),
            holding.label("held"),
        )
        .select_from(
            products.outerjoin(ledger_sums, ledger_sums.c.product_id == products.c.id).outerjoin(
                held_sums, held_sums.c.product_id == products.c.id
            )
        )
        .where(*query_where, sa.or_(products.c.qty != ledger - holding, products.c.qty < 0))
        .order_by(products.c.id)
    )


@dataclass(frozen=True, slots=True)
class DriftReading:
    """What one round found."""

    drift_units: int  # the sum over products of |qty - (ledger - held)|
    drifted: int  # products whose stock is not what their ledger says
    negative: int  # products whose stock is below zero
    at: float  # when it was read (Unix time)


async def read_drift(conn: AsyncConnection, at: float) -> DriftReading:
    units = drifted = negative = 0
    for row in await conn.execute(ledger_query()):
        drift = int(row.qty) - (int(row.ledger) - int(row.held))
        units += abs(drift)
        drifted += drift != 0
        negative += int(row.qty) < 0
    return DriftReading(units, drifted, negative, at)


class StockDriftGauge:
    """The periodic measure of stock drift and the gauges it shows (see the module
    docstring). ``start``/``stop`` as any background work of a service."""

    def __init__(self, engine: AsyncEngine, interval: float) -> None:
        self._engine = engine
        self._rounds = PeriodicTask(
            "stock-drift", self.run_once, interval, jitter=0.2, run_at_start=True
        )
        self.reading: DriftReading | None = None

    def start(self) -> None:
        self._rounds.start()

    async def stop(self) -> None:
        await self._rounds.stop()

    async def run_once(self) -> DriftReading:
        async with self._engine.connect() as conn:
            reading = await read_drift(conn, time.time())
        if reading.drift_units or reading.negative:
            log.warning(
                "stock drift: run orderstack reconcile",
                drift_units=reading.drift_units,
                drifted_products=reading.drifted,
                negative_products=reading.negative,
            )
        self.reading = reading
        return reading

    def families(self) -> list[Metric]:
        """The last reading as gauges; none before the first round answered."""
        reading = self.reading
        if reading is None:
            return []
        units = GaugeMetricFamily(
            "stock_drift_units",
            "Units of stock, summed over products, that the ledger does not explain "
            "(|qty - (ledger - held)|; 0 when every product is as orderstack reconcile proves)",
            value=reading.drift_units,
        )
        drifted = GaugeMetricFamily(
            "stock_drift_products",
            "Products whose stock is off, by kind: stock_drift (not what the ledger says), "
            "negative_stock (below zero)",
            labels=["kind"],
        )
        drifted.add_metric(["stock_drift"], reading.drifted)
        drifted.add_metric(["negative_stock"], reading.negative)
        checked = GaugeMetricFamily(
            "stock_drift_checked_timestamp_seconds",
            "When stock_drift_units was last measured (every STOCK_DRIFT_CHECK_SECONDS)",
            value=reading.at,
        )
        return [units, drifted, checked]
