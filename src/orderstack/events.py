"""Every event of the system, declared once: its name, version, payload schemas, who
publishes it and who consumes it.

This is the one place an event name is written in ``src/`` (tests/unit/test_event_catalog.py
fails on a quoted name anywhere else). Everything else derives from these declarations:

- the topology (messaging/topology.py): each service's queue is bound to the events it
  consumes, and an event with a consumer is published ``mandatory``;
- parsing: a service's handler reads each event it consumes with the event's ``reads``
  model (messaging/consumer.py ``EventRoutes``, which refuses a handler that does not cover
  exactly what its service consumes);
- the builders (orders/events.py, products/events.py) construct ``payload`` and name the
  event from its declaration;
- the AsyncAPI document of each service (``/asyncapi.json``: assembly.py, messaging/asyncapi.py)
  and the ``events_published`` series shown at 0 from the start (messaging/metrics.py);
- the tables of docs/CONTRACT.md#events (``make docs``: messaging/events_doc.py).

Adding an event: one declaration here (appended to ``EVENTS``) and, when a service of ours
consumes it, its route in that service's handler.

The payloads are the seed's, camelCase, exactly as on the wire. Each event has two models:
``payload``, what our publisher writes (strict: ``extra="forbid"``; the builders construct
it, the AsyncAPI document's ``send`` schema is it), and ``reads``, what a consumer requires
(lenient: unknown fields ignored, the seed's forms taken). A change to either follows the
versioning rule of docs/events.md: a new version is a new name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from orderstack import wire
from orderstack.quantities import MAX_ORDER_QUANTITY, MAX_QTY


class Service(StrEnum):
    """A service of ours, as it publishes and consumes events."""

    ORDERS = "order service"
    PRODUCTS = "product service"


@dataclass(frozen=True, slots=True)
class EventType:
    """One event: ``name`` is its routing key, the ``pattern`` of its envelope and the AMQP
    ``type``; ``version`` is the version of its schema (a new version is a new name).
    ``consumers`` empty: a broadcast, dropped by the broker when no queue is bound to it."""

    name: str
    version: int
    payload: type[BaseModel]  # what our publisher writes
    publisher: Service
    consumers: tuple[Service, ...]
    # What a consumer requires of the payload, for the table of docs/CONTRACT.md.
    requires: str
    # What its consumers read it with; required when it has consumers.
    reads: type[BaseModel] | None = None
    # What the payload we publish holds beyond its fields, for the same table ("" if nothing).
    note: str = ""

    def __post_init__(self) -> None:
        if self.consumers and self.reads is None:
            raise TypeError(f"{self.name}: consumed, but no model to read it with")

    @property
    def routed(self) -> bool:
        """A service of ours must receive it: published ``mandatory`` (the relay keeps a
        row no queue takes and retries)."""
        return bool(self.consumers)


# -- payload field types ----------------------------------------------------------------------

_Quantity = Annotated[int, Field(ge=1, le=MAX_ORDER_QUANTITY, description="Units ordered")]
# What consumers read: strict integers (``"2"`` or ``true`` is malformed), within the columns.
_ReadId = Annotated[StrictInt, Field(ge=1, le=wire.MAX_ID)]
_ReadQuantity = Annotated[StrictInt, Field(ge=1, le=MAX_QTY)]

FAILURE_REASON: Final = "product_not_found_or_unavailable"
CANCELLED_REASON: Final = "cancelled"  # the order was cancelled before its stock was taken
FailureReason = Literal["product_not_found_or_unavailable", "cancelled"]


# -- order.created ---------------------------------------------------------------------------


class OrderCreated(BaseModel):
    """An order was placed (``pending``): the product service takes its units, all or none,
    and answers ``order.qty_confirmed`` or ``order.qty_failed``. Sent again, with a new
    event id, while the order stays pending too long."""

    model_config = ConfigDict(extra="forbid")
    orderId: wire.Id
    productId: wire.Id
    totalPrice: wire.Money
    quantity: _Quantity
    timestamp: wire.Timestamp = Field(description="When the order was placed")


class OrderCreatedPayload(BaseModel):
    """Only ``orderId``, ``productId`` and ``quantity`` are read: the seed's Go publisher
    sends ``createdAt`` where ours sends ``timestamp``, and neither is needed to take stock.
    Without ``quantity`` (the seed's publishers) the order asks for one unit."""

    model_config = ConfigDict(extra="ignore")
    orderId: _ReadId
    productId: _ReadId
    quantity: _ReadQuantity = 1


ORDER_CREATED = EventType(
    name="order.created",
    version=1,
    payload=OrderCreated,
    reads=OrderCreatedPayload,
    publisher=Service.ORDERS,
    consumers=(Service.PRODUCTS,),
    requires="`orderId`, `productId`; `quantity` absent means 1 (the seed's Go publisher "
    "sends none, and `createdAt` instead of `timestamp`: fine)",
)


# -- order.cancelled -------------------------------------------------------------------------


class OrderCancelled(BaseModel):
    """An order was cancelled (it was ``pending`` or ``confirmed``): the product service gives
    back the units it had taken, once; one it has not seen yet will take nothing. Not
    answered."""

    model_config = ConfigDict(extra="forbid")
    orderId: wire.Id
    productId: wire.Id
    quantity: _Quantity
    timestamp: wire.Timestamp = Field(description="When the order was cancelled")


class OrderCancelledPayload(BaseModel):
    """``orderId``, ``productId`` and ``quantity`` (absent: 1) are read; the rest ignored."""

    model_config = ConfigDict(extra="ignore")
    orderId: _ReadId
    productId: _ReadId
    quantity: _ReadQuantity = 1


ORDER_CANCELLED = EventType(
    name="order.cancelled",
    version=1,
    payload=OrderCancelled,
    reads=OrderCancelledPayload,
    publisher=Service.ORDERS,
    consumers=(Service.PRODUCTS,),
    requires="`orderId`, `productId`; `quantity` absent means 1",
)


# -- the product service's answers: order.qty_confirmed, order.qty_failed ---------------------


class OrderAnswer(BaseModel):
    """An answer needs its ``orderId`` only: the seed's NestJS service sends
    ``order.qty_confirmed`` as ``{"orderId"}`` alone and ``order.qty_failed`` without a
    ``reason``; whatever else is there (timestamp, reason) is ignored."""

    model_config = ConfigDict(extra="ignore")
    orderId: _ReadId


class OrderQtyConfirmed(BaseModel):
    """The order's units were taken from the product's stock: the order is ``confirmed``."""

    model_config = ConfigDict(extra="forbid")
    orderId: wire.Id
    timestamp: wire.Timestamp = Field(description="When the units were taken")


ORDER_QTY_CONFIRMED = EventType(
    name="order.qty_confirmed",
    version=1,
    payload=OrderQtyConfirmed,
    reads=OrderAnswer,
    publisher=Service.PRODUCTS,
    consumers=(Service.ORDERS,),
    requires='`orderId` (the seed\'s `{"orderId"}` alone is fine)',
)


class OrderQtyFailed(BaseModel):
    """The order took nothing: the product is unknown, deleted or short of units
    (``product_not_found_or_unavailable``), or the order had been cancelled first
    (``cancelled``). The order is ``failed``."""

    model_config = ConfigDict(extra="forbid")
    orderId: wire.Id
    reason: FailureReason = Field(
        description="Why nothing was taken; a consumer treats a value it does not know as a failure"
    )
    timestamp: wire.Timestamp = Field(description="When the order was refused")


ORDER_QTY_FAILED = EventType(
    name="order.qty_failed",
    version=1,
    payload=OrderQtyFailed,
    reads=OrderAnswer,
    publisher=Service.PRODUCTS,
    consumers=(Service.ORDERS,),
    requires="`orderId` (a missing `reason` is fine)",
    note=f"`reason` is `{FAILURE_REASON}`, or `{CANCELLED_REASON}` for an order cancelled "
    "before its stock was taken",
)


# -- product_created -------------------------------------------------------------------------


class ProductCreated(BaseModel):
    """A product was created (a broadcast: no service of ours consumes it; with no queue
    bound to it the broker drops it)."""

    model_config = ConfigDict(extra="forbid")
    id: wire.Id
    name: str
    price: wire.Money
    qty: Annotated[int, Field(ge=0, le=MAX_QTY, description="Units in stock")]
    timestamp: wire.Timestamp = Field(description="When the product was created")


# (The order service does not cache from it: the product service caches a product when it
# creates it, and a late creation snapshot must never be written back over a cache entry
# that has since expired.)
PRODUCT_CREATED = EventType(
    name="product_created",
    version=1,
    payload=ProductCreated,
    publisher=Service.PRODUCTS,
    consumers=(),
    requires="nobody consumes it; with no queue bound the broker drops it",
)


# -- the registry ----------------------------------------------------------------------------

# Every event, in the order the documents and tables list them.
EVENTS: tuple[EventType, ...] = (
    ORDER_CREATED,
    ORDER_CANCELLED,
    ORDER_QTY_CONFIRMED,
    ORDER_QTY_FAILED,
    PRODUCT_CREATED,
)
BY_NAME: Mapping[str, EventType] = {event.name: event for event in EVENTS}
if len(BY_NAME) != len(EVENTS):  # pragma: no cover - a declaration error
    raise RuntimeError("two events declared with one name")


def published_by(service: Service) -> tuple[EventType, ...]:
    """The events ``service`` publishes, in declaration order."""
    return tuple(event for event in EVENTS if event.publisher is service)


def consumed_by(service: Service) -> tuple[EventType, ...]:
    """The events ``service`` consumes (its queue's bindings), in declaration order."""
    return tuple(event for event in EVENTS if service in event.consumers)


__all__ = [
    "BY_NAME",
    "CANCELLED_REASON",
    "EVENTS",
    "FAILURE_REASON",
    "ORDER_CANCELLED",
    "ORDER_CREATED",
    "ORDER_QTY_CONFIRMED",
    "ORDER_QTY_FAILED",
    "PRODUCT_CREATED",
    "EventType",
    "FailureReason",
    "Service",
    "consumed_by",
    "published_by",
]
