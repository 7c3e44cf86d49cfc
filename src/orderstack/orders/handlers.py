"""Event handlers of the order service: the product service's answers settle orders;
``product_created`` warms the product cache."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from orderstack.cache.port import CachedProduct
from orderstack.messaging.envelope import Event, MalformedEvent
from orderstack.orders.catalog import ProductCatalog
from orderstack.orders.domain import OrderStatus, SettleOrder
from orderstack.orders.service import OrderService
from orderstack.wire import MAX_ID

_Id = Annotated[StrictInt, Field(ge=1, le=MAX_ID)]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")
    orderId: _Id


class _ProductCreated(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: _Id
    name: Annotated[str, Field(min_length=1, max_length=255)]
    price: Annotated[Decimal, Field(gt=0, le=Decimal("9999999999.99"))]
    qty: Annotated[StrictInt, Field(ge=0, le=2_147_483_647)]
    timestamp: datetime


_ANSWERS = {
    "order.qty_confirmed": OrderStatus.CONFIRMED,
    "order.qty_failed": OrderStatus.FAILED,
}


class OrderEventsHandler:
    def __init__(self, service: OrderService, catalog: ProductCatalog) -> None:
        self._service, self._catalog = service, catalog

    def validate(self, event: Event) -> SettleOrder | CachedProduct:
        try:
            if event.name in _ANSWERS:
                answer = _Answer.model_validate(event.data)
                return SettleOrder(order_id=answer.orderId, status=_ANSWERS[event.name])
            if event.name == "product_created":
                created = _ProductCreated.model_validate(event.data)
                # A product is created at version 1, so this entry can never hide a newer one.
                return CachedProduct(
                    id=created.id,
                    version=1,
                    name=created.name,
                    price=created.price,
                    qty=created.qty,
                    created_at=created.timestamp,
                    updated_at=created.timestamp,
                )
        except ValidationError as exc:
            raise MalformedEvent(f"invalid {event.name}: {exc.errors()[0]['msg']}") from None
        raise MalformedEvent(f"unexpected event {event.name!r}")

    async def apply(self, uow: Any, commands: Sequence[SettleOrder | CachedProduct]) -> None:
        answers = [c for c in commands if isinstance(c, SettleOrder)]
        if answers:
            await self._service.settle_orders(uow, answers)
        created = [c for c in commands if isinstance(c, CachedProduct)]

        async def remember() -> None:
            for product in created:
                await self._catalog.remember(product)

        if created:
            uow.after_commit(remember)
