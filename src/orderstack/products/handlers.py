"""Event handlers of the product service: ``order.created`` takes stock, ``order.cancelled``
gives it back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import structlog
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from orderstack.messaging.consumer import bound_to, events_being_applied
from orderstack.messaging.envelope import Event, MalformedEvent
from orderstack.messaging.outbox import caused_by
from orderstack.products.domain import MAX_QTY, CancelReservation, ReserveStock
from orderstack.products.service import ProductService, ProductUoW
from orderstack.wire import MAX_ID

log = structlog.get_logger(__name__)

_Id = Annotated[StrictInt, Field(ge=1, le=MAX_ID)]
_Quantity = Annotated[StrictInt, Field(ge=1, le=MAX_QTY)]


class OrderCreatedPayload(BaseModel):
    """Only ``orderId``, ``productId`` and ``quantity`` are read: the seed's Go publisher
    sends ``createdAt`` where ours sends ``timestamp``, and neither is needed to take stock.
    Without ``quantity`` (the seed's publishers) the order asks for one unit."""

    model_config = ConfigDict(extra="ignore")
    orderId: _Id
    productId: _Id
    quantity: _Quantity = 1


class OrderCancelledPayload(BaseModel):
    """``orderId``, ``productId`` and ``quantity`` (absent: 1) are read; the rest ignored."""

    model_config = ConfigDict(extra="ignore")
    orderId: _Id
    productId: _Id
    quantity: _Quantity = 1


_PAYLOADS: dict[str, type[OrderCreatedPayload] | type[OrderCancelledPayload]] = {
    "order.created": OrderCreatedPayload,
    "order.cancelled": OrderCancelledPayload,
}

# Event name -> the model its payload is read with: every event this service consumes.
CONSUMED: dict[str, type[BaseModel]] = dict(_PAYLOADS)


class OrderStockHandler:
    def __init__(self, service: ProductService) -> None:
        self._service = service

    def validate(self, event: Event) -> ReserveStock | CancelReservation:
        model = _PAYLOADS.get(event.name)
        if model is None:
            raise MalformedEvent(f"unexpected event {event.name!r}")
        try:
            payload = model.model_validate(event.data)
        except ValidationError as exc:
            raise MalformedEvent(f"invalid {event.name}: {exc.errors()[0]['msg']}") from None
        command = ReserveStock if event.name == "order.created" else CancelReservation
        return command(payload.orderId, payload.productId, payload.quantity)

    async def apply(
        self, uow: ProductUoW, commands: Sequence[ReserveStock | CancelReservation]
    ) -> None:
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
