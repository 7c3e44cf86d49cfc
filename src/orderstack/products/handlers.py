"""Event handlers of the product service: ``order.created`` takes stock."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from orderstack.messaging.envelope import Event, MalformedEvent
from orderstack.products.domain import ReserveStock
from orderstack.products.service import ProductService, ProductUoW
from orderstack.wire import MAX_ID

_Id = Annotated[StrictInt, Field(ge=1, le=MAX_ID)]


class OrderCreatedPayload(BaseModel):
    """Only ``orderId`` and ``productId`` are read: the seed's Go publisher sends
    ``createdAt`` where ours sends ``timestamp``, and neither is needed to take stock."""

    model_config = ConfigDict(extra="ignore")
    orderId: _Id
    productId: _Id


class OrderCreatedHandler:
    def __init__(self, service: ProductService) -> None:
        self._service = service

    def validate(self, event: Event) -> ReserveStock:
        if event.name != "order.created":
            raise MalformedEvent(f"unexpected event {event.name!r}")
        try:
            payload = OrderCreatedPayload.model_validate(event.data)
        except ValidationError as exc:
            raise MalformedEvent(f"invalid order.created: {exc.errors()[0]['msg']}") from None
        return ReserveStock(order_id=payload.orderId, product_id=payload.productId)

    async def apply(self, uow: ProductUoW, commands: Sequence[ReserveStock]) -> None:
        await self._service.reserve_stock(uow, commands)
