"""Event handlers of the product service: ``order.created`` takes stock, ``order.cancelled``
and ``order.expired`` (a held order not confirmed in time) give it back.

``OrderStockHandler`` is the service's ``EventHandler[ProductTransaction, StockCommand]``
(messaging/consumer.py): it applies a batch inside the consumer's unit of work and never
commits it; the consumer commits, with its inbox claim."""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from orderstack import wire
from orderstack.events import (
    ORDER_CANCELLED,
    ORDER_CREATED,
    ORDER_EXPIRED,
    OrderCancelledPayload,
    OrderCreatedPayload,
    OrderExpiredPayload,
    Service,
)
from orderstack.messaging.consumer import EventRoutes, bound_to, events_being_applied
from orderstack.messaging.envelope import Event
from orderstack.messaging.outbox import caused_by
from orderstack.products.domain import CancelReservation, ReserveStock, StockLine
from orderstack.products.service import ProductService, ProductTransaction

log = structlog.get_logger(__name__)


def _reserve(payload: OrderCreatedPayload) -> ReserveStock:
    lines = tuple(StockLine(product_id, units) for product_id, units in payload.lines)
    agreed = None if payload.agreedTotal is None else wire.exact(payload.agreedTotal)
    return ReserveStock(payload.orderId, lines=lines, agreed_total=agreed)


def _cancel(payload: OrderCancelledPayload | OrderExpiredPayload) -> CancelReservation:
    lines = tuple(StockLine(product_id, units) for product_id, units in payload.lines)
    return CancelReservation(payload.orderId, lines=lines)


# The command of an event the product service consumes.
StockCommand = ReserveStock | CancelReservation

# What each event the product service consumes becomes (what it reads: orderstack/events.py).
ROUTES: EventRoutes[StockCommand] = EventRoutes(
    Service.PRODUCTS,
    # An expired order gives its units back as a cancelled one does: once per order.
    {ORDER_CREATED: _reserve, ORDER_CANCELLED: _cancel, ORDER_EXPIRED: _cancel},
)


class OrderStockHandler:
    def __init__(self, service: ProductService) -> None:
        self._service = service

    def validate(self, event: Event) -> StockCommand:
        return ROUTES.read(event)

    async def apply(self, uow: ProductTransaction, commands: Sequence[StockCommand]) -> None:
        # An answer about an order takes the origin (X-Request-ID, traceparent) of the
        # order.created it answers, so the order service's settle logs name the request
        # that created the order.
        events = events_being_applied()
        cause = {
            command.order_id: event
            for command, event in (zip(commands, events, strict=True) if events else ())
            if isinstance(command, ReserveStock)
        }

        answers: list[tuple[Event, Event]] = []

        def answered(answer: Event) -> Event | None:
            order_id = answer.data.get("orderId")
            found = cause.get(order_id) if isinstance(order_id, int) else None
            if found is not None:
                answers.append((answer, found))
            return found

        with caused_by(answered):
            await self._service.apply_order_events(uow, commands)

        async def log_answered() -> None:
            for answer, order_created in answers:
                with bound_to(order_created):
                    log.info(
                        "order answered",
                        order_id=answer.data.get("orderId"),
                        answer=answer.name,
                        reason=answer.data.get("reason"),
                    )

        if answers:
            uow.after_commit(log_answered)
