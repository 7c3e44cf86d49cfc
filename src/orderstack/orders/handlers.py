"""Event handlers of the order service: the product service's answers settle orders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import structlog
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from orderstack.messaging.consumer import bound_to, events_being_applied
from orderstack.messaging.envelope import Event, MalformedEvent
from orderstack.orders.domain import OrderStatus, SettleOrder
from orderstack.orders.service import OrderService, OrderUoW
from orderstack.wire import MAX_ID

log = structlog.get_logger(__name__)

_Id = Annotated[StrictInt, Field(ge=1, le=MAX_ID)]


class OrderAnswer(BaseModel):
    """An answer needs its ``orderId`` only: the seed's NestJS service sends
    ``order.qty_confirmed`` as ``{"orderId"}`` alone and ``order.qty_failed`` without a
    ``reason``; whatever else is there (timestamp, reason) is ignored."""

    model_config = ConfigDict(extra="ignore")
    orderId: _Id


_ANSWERS = {
    "order.qty_confirmed": OrderStatus.CONFIRMED,
    "order.qty_failed": OrderStatus.FAILED,
}

# Event name -> the model its payload is read with: every event this service consumes.
CONSUMED: dict[str, type[BaseModel]] = dict.fromkeys(_ANSWERS, OrderAnswer)


class OrderEventsHandler:
    def __init__(self, service: OrderService) -> None:
        self._service = service

    def validate(self, event: Event) -> SettleOrder:
        status = _ANSWERS.get(event.name)
        if status is None:
            raise MalformedEvent(f"unexpected event {event.name!r}")
        try:
            answer = OrderAnswer.model_validate(event.data)
        except ValidationError as exc:
            raise MalformedEvent(f"invalid {event.name}: {exc.errors()[0]['msg']}") from None
        return SettleOrder(order_id=answer.orderId, status=status)

    async def apply(self, uow: OrderUoW, commands: Sequence[SettleOrder]) -> None:
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
