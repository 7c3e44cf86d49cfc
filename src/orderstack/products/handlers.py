"""Event handlers of the product service: ``order.created`` takes stock, ``order.cancelled``
gives it back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from orderstack.messaging.envelope import Event, MalformedEvent
from orderstack.products.domain import MAX_QTY, CancelReservation, ReserveStock
from orderstack.products.service import ProductService, ProductUoW
from orderstack.wire import MAX_ID

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
        await self._service.apply_order_events(uow, commands)
