"""Event handlers of the order service: the product service's answers settle orders.

``OrderEventsHandler`` is the service's ``EventHandler[OrderTransaction, SettleOrder]``
(messaging/consumer.py): it applies a batch inside the consumer's unit of work and never
commits it; the consumer commits, with its inbox claim."""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from orderstack import wire
from orderstack.events import (
    ORDER_QTY_CONFIRMED,
    ORDER_QTY_FAILED,
    ConfirmedAnswer,
    FailedAnswer,
    Service,
)
from orderstack.messaging.consumer import EventRoutes, bound_to, events_being_applied
from orderstack.messaging.envelope import Event
from orderstack.orders.domain import Failure, OrderLine, OrderStatus, SettleOrder, ShortLine
from orderstack.orders.service import OrderService, OrderTransaction

log = structlog.get_logger(__name__)


def _confirmed(answer: ConfirmedAnswer) -> SettleOrder:
    priced = tuple(
        OrderLine(item.productId, item.quantity, wire.exact(item.unitPrice))
        for item in answer.items or ()
    )
    total = None if answer.totalPrice is None else wire.exact(answer.totalPrice)
    return SettleOrder(answer.orderId, OrderStatus.CONFIRMED, priced, total)


def _failed(answer: FailedAnswer) -> SettleOrder:
    short = tuple(
        ShortLine(line.productId, line.requested, line.available) for line in answer.lines or ()
    )
    failure = None
    if answer.reason is not None or short or answer.totalPrice is not None:
        total = None if answer.totalPrice is None else wire.exact(answer.totalPrice)
        failure = Failure(answer.reason, short, total)
    return SettleOrder(answer.orderId, OrderStatus.FAILED, failure=failure)


# What each answer the order service consumes becomes (what it reads: orderstack/events.py).
ROUTES: EventRoutes[SettleOrder] = EventRoutes(
    Service.ORDERS,
    {ORDER_QTY_CONFIRMED: _confirmed, ORDER_QTY_FAILED: _failed},
)


class OrderEventsHandler:
    def __init__(self, service: OrderService) -> None:
        self._service = service

    def validate(self, event: Event) -> SettleOrder:
        return ROUTES.read(event)

    async def apply(self, uow: OrderTransaction, commands: Sequence[SettleOrder]) -> None:
        moved = await self._service.settle_orders(uow, commands)
        events = events_being_applied()
        answered = list(zip(commands, events, strict=True)) if events else []

        async def log_settled() -> None:
            # One line per answer, carrying the id of the request that created the order
            # (the product service copied it from order.created into its answer).
            for command, event in answered:
                outcome = moved.get(command.order_id)
                if outcome is False:
                    continue  # not pending any more: logged as ignored by the service
                with bound_to(event):
                    log.info(
                        "order settled" if outcome else "order answer applied",
                        order_id=command.order_id,
                        status=str(command.status),
                        answer=event.name,
                        message_id=event.id,
                    )

        uow.after_commit(log_settled)
