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
versioning rule of docs/events.md: a compatible change (an optional field added) raises
``version``; an incompatible one is a new name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, model_validator

from orderstack import wire
from orderstack.quantities import MAX_MONEY_TEXT, MAX_ORDER_LINES, MAX_ORDER_QUANTITY, MAX_QTY


class Service(StrEnum):
    """A service of ours, as it publishes and consumes events."""

    ORDERS = "order service"
    PRODUCTS = "product service"


@dataclass(frozen=True, slots=True)
class EventType:
    """One event: ``name`` is its routing key, the ``pattern`` of its envelope and the AMQP
    ``type``; ``version`` counts the compatible revisions of its schema (an incompatible
    change is a new name, see docs/events.md).
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
# A line's units, bounded as POST /orders bounds them: an event asking for more was not
# written by an order service (it is dead-lettered, nothing taken).
_ReadLineQuantity = Annotated[StrictInt, Field(ge=1, le=MAX_ORDER_QUANTITY)]
_ReadUnits = Annotated[StrictInt, Field(ge=0, le=MAX_QTY)]
# One product's units in one order, its lines summed (an answer's priced line, a short
# line's ``requested``): at most every line of an order on one product, each at the most
# POST /orders takes. More was not written by a product service answering our orders.
MAX_PRODUCT_UNITS = MAX_ORDER_LINES * MAX_ORDER_QUANTITY
_ProductUnits = Annotated[int, Field(ge=1, le=MAX_PRODUCT_UNITS)]
_ReadProductUnits = Annotated[StrictInt, Field(ge=1, le=MAX_PRODUCT_UNITS)]
# Money as consumers read it: a JSON number (a string or a boolean is malformed); the
# handlers take it exactly with ``wire.exact``.
_ReadMoney = Annotated[StrictInt | StrictFloat, Field(ge=0, le=float(MAX_MONEY_TEXT))]

FAILURE_REASON: Final = "product_not_found_or_unavailable"
CANCELLED_REASON: Final = "cancelled"  # the order was cancelled before its stock was taken
PRICE_CHANGED_REASON: Final = "price_changed"  # the catalog total differs from the agreed one
TOTAL_OUT_OF_RANGE_REASON: Final = "total_out_of_range"  # the catalog total is too large
FailureReason = Literal[
    "product_not_found_or_unavailable", "cancelled", "price_changed", "total_out_of_range"
]


class OrderItem(BaseModel):
    """One line of an order: units of a product."""

    model_config = ConfigDict(extra="forbid")
    productId: wire.Id
    quantity: _Quantity


class ReadItem(BaseModel):
    """A line as consumers read it (``quantity`` absent means 1)."""

    model_config = ConfigDict(extra="ignore")
    productId: _ReadId
    quantity: _ReadLineQuantity = 1


class _ReadsLines(BaseModel):
    """An order named by its ``items``, or by the seed's one-line ``productId`` (and
    ``quantity``): a consumer reads ``lines``. With both, ``items`` wins."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"anyOf": [{"required": ["productId"]}, {"required": ["items"]}]},
    )
    orderId: _ReadId
    productId: _ReadId | None = None
    quantity: _ReadLineQuantity = 1
    items: Annotated[list[ReadItem], Field(min_length=1, max_length=MAX_ORDER_LINES)] | None = None

    @model_validator(mode="after")
    def _names_its_lines(self) -> Self:
        if self.items is None and self.productId is None:
            raise ValueError("an order event names its productId or its items")
        return self

    @property
    def lines(self) -> list[tuple[int, int]]:
        """(product id, units) per line, as sent."""
        if self.items is not None:
            return [(item.productId, item.quantity) for item in self.items]
        assert self.productId is not None
        return [(self.productId, self.quantity)]


class _OrderLines(BaseModel):
    """What our order events say of an order: its lines, and for a one-line order the
    seed's ``productId`` and ``quantity`` too (the seed's consumers read those)."""

    model_config = ConfigDict(extra="forbid")
    orderId: wire.Id
    items: Annotated[list[OrderItem], Field(min_length=1, max_length=MAX_ORDER_LINES)]
    productId: wire.Id | None = Field(None, description="A one-line order's product")
    quantity: _Quantity | None = Field(None, description="A one-line order's units")


# -- order.created ---------------------------------------------------------------------------


class OrderCreated(_OrderLines):
    """An order was placed (``pending``): the product service takes the units of all its
    lines, or none, prices them from the catalog, and answers ``order.qty_confirmed`` or
    ``order.qty_failed``. Sent again, with a new event id, while the order stays pending too
    long. A one-line order also carries the seed's ``productId``, ``quantity`` and
    ``totalPrice`` (when its client sent one), so that the seed's consumer settles it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "orderId": 41,
                    "items": [{"productId": 1, "quantity": 2}],
                    "productId": 1,
                    "quantity": 2,
                    "totalPrice": 5999.98,
                    "agreedTotal": 5999.98,
                    "timestamp": "2026-12-05T10:30:00Z",
                },
                {
                    "orderId": 42,
                    "items": [{"productId": 1, "quantity": 1}, {"productId": 2, "quantity": 2}],
                    "timestamp": "2026-12-05T10:30:00Z",
                },
            ]
        },
    )
    totalPrice: wire.Money | None = Field(None, description="The total its client sent")
    agreedTotal: wire.Money | None = Field(
        None,
        description="The total its client agreed to: the order takes nothing unless its "
        "catalog total equals it (absent: priced by the catalog, unchecked)",
    )
    timestamp: wire.Timestamp = Field(description="When the order was placed")


class OrderCreatedPayload(_ReadsLines):
    """``orderId``, and ``items`` or the seed's ``productId`` (``quantity`` absent: one
    unit) are read, with ``agreedTotal`` when present; the rest is ignored (the seed's Go
    publisher sends ``createdAt`` where ours sends ``timestamp``)."""

    agreedTotal: _ReadMoney | None = None


ORDER_CREATED = EventType(
    name="order.created",
    version=2,
    payload=OrderCreated,
    reads=OrderCreatedPayload,
    publisher=Service.ORDERS,
    consumers=(Service.PRODUCTS,),
    requires="`orderId`, and `items` or `productId` (`quantity` absent means 1; the seed's "
    "Go publisher sends no `quantity`, and `createdAt` instead of `timestamp`: fine); "
    "`agreedTotal` checked when present",
    note="`items` always; `productId`, `quantity` and `totalPrice` too for a one-line order",
)


# -- order.cancelled -------------------------------------------------------------------------


class OrderCancelled(_OrderLines):
    """An order was cancelled (it was ``pending`` or ``confirmed``): the product service gives
    back the units it had taken, once; one it has not seen yet will take nothing. Not
    answered."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "orderId": 42,
                    "items": [{"productId": 1, "quantity": 1}, {"productId": 2, "quantity": 2}],
                    "timestamp": "2026-12-05T10:30:00Z",
                }
            ]
        },
    )
    timestamp: wire.Timestamp = Field(description="When the order was cancelled")


class OrderCancelledPayload(_ReadsLines):
    """``orderId``, and ``items`` or ``productId`` (``quantity`` absent: 1); the rest ignored."""


ORDER_CANCELLED = EventType(
    name="order.cancelled",
    version=2,
    payload=OrderCancelled,
    reads=OrderCancelledPayload,
    publisher=Service.ORDERS,
    consumers=(Service.PRODUCTS,),
    requires="`orderId`, and `items` or `productId` (`quantity` absent means 1)",
    note="`items` always; `productId` and `quantity` too for a one-line order",
)


# -- order.expired ---------------------------------------------------------------------------


class OrderExpired(_OrderLines):
    """A held order was not confirmed in time (it was ``reserved``): the product service
    gives back the units it had taken, once, as for ``order.cancelled``. Not answered."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "orderId": 45,
                    "items": [{"productId": 1, "quantity": 2}],
                    "productId": 1,
                    "quantity": 2,
                    "expiresAt": "2026-12-05T10:35:00Z",
                    "timestamp": "2026-12-05T10:35:01Z",
                }
            ]
        },
    )
    expiresAt: wire.Timestamp | None = Field(None, description="When its hold ended")
    timestamp: wire.Timestamp = Field(description="When the order expired")


class OrderExpiredPayload(_ReadsLines):
    """``orderId``, and ``items`` or ``productId`` (``quantity`` absent: 1); the rest ignored."""


ORDER_EXPIRED = EventType(
    name="order.expired",
    version=1,
    payload=OrderExpired,
    reads=OrderExpiredPayload,
    publisher=Service.ORDERS,
    consumers=(Service.PRODUCTS,),
    requires="`orderId`, and `items` or `productId` (`quantity` absent means 1)",
    note="`items` always; `productId` and `quantity` too for a one-line order; `expiresAt`",
)


# -- the product service's answers: order.qty_confirmed, order.qty_failed ---------------------


class PricedItem(BaseModel):
    """A line as reserved: a product's units (its lines summed), at the catalog's price."""

    model_config = ConfigDict(extra="forbid")
    productId: wire.Id
    quantity: _ProductUnits
    unitPrice: wire.Money
    lineTotal: wire.Money


class ReadPricedItem(BaseModel):
    model_config = ConfigDict(extra="ignore")
    productId: _ReadId
    quantity: _ReadProductUnits
    unitPrice: _ReadMoney


class ShortItem(BaseModel):
    """A line the order could not have: its product, the units asked, the units left (0 for
    a product unknown or deleted)."""

    model_config = ConfigDict(extra="forbid")
    productId: wire.Id
    requested: _ProductUnits
    available: Annotated[int, Field(ge=0, le=MAX_QTY)]


class ReadShortItem(BaseModel):
    model_config = ConfigDict(extra="ignore")
    productId: _ReadId
    requested: _ReadProductUnits
    available: _ReadUnits


class OrderAnswer(BaseModel):
    """An answer needs its ``orderId`` only: the seed's NestJS service sends
    ``order.qty_confirmed`` as ``{"orderId"}`` alone and ``order.qty_failed`` without a
    ``reason``; whatever else is there (timestamp, reason) is ignored."""

    model_config = ConfigDict(extra="ignore")
    orderId: _ReadId


class ConfirmedAnswer(OrderAnswer):
    """``orderId``; ``items`` (the priced lines) and ``totalPrice`` when present (ours)."""

    items: Annotated[list[ReadPricedItem], Field(max_length=MAX_ORDER_LINES)] | None = None
    totalPrice: _ReadMoney | None = None


class FailedAnswer(OrderAnswer):
    """``orderId``; ``reason``, ``lines`` (the short ones) and ``totalPrice`` (the catalog
    total) when present (ours). A reason a consumer does not know still means failed."""

    reason: Annotated[str, Field(max_length=64)] | None = None
    lines: Annotated[list[ReadShortItem], Field(max_length=MAX_ORDER_LINES)] | None = None
    totalPrice: _ReadMoney | None = None


class OrderQtyConfirmed(BaseModel):
    """The units of every line were taken: the order is ``confirmed``, at these prices."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "orderId": 42,
                    "items": [
                        {"productId": 1, "quantity": 1, "unitPrice": 2999.99, "lineTotal": 2999.99},
                        {"productId": 2, "quantity": 2, "unitPrice": 25, "lineTotal": 50},
                    ],
                    "totalPrice": 3049.99,
                    "timestamp": "2026-12-05T10:30:00Z",
                }
            ]
        },
    )
    orderId: wire.Id
    items: list[PricedItem] | None = Field(
        None, description="The lines reserved, priced from the catalog (one per product)"
    )
    totalPrice: wire.Money | None = Field(None, description="The catalog total of the lines")
    timestamp: wire.Timestamp = Field(description="When the units were taken")


ORDER_QTY_CONFIRMED = EventType(
    name="order.qty_confirmed",
    version=2,
    payload=OrderQtyConfirmed,
    reads=ConfirmedAnswer,
    publisher=Service.PRODUCTS,
    consumers=(Service.ORDERS,),
    requires='`orderId` (the seed\'s `{"orderId"}` alone is fine); `items` and `totalPrice` '
    "when present",
    note="`items` (priced, one per product) and `totalPrice`",
)


class OrderQtyFailed(BaseModel):
    """The order took nothing: a line's product is unknown, deleted or short of units
    (``product_not_found_or_unavailable``, naming each such line), the catalog total is not
    the one its client agreed to (``price_changed``, with the catalog total), or the order
    had been cancelled first (``cancelled``). The order is ``failed``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "orderId": 43,
                    "reason": "product_not_found_or_unavailable",
                    "lines": [{"productId": 2, "requested": 20, "available": 8}],
                    "totalPrice": 3499.99,
                    "timestamp": "2026-12-05T10:30:00Z",
                },
                {
                    "orderId": 44,
                    "reason": "price_changed",
                    "totalPrice": 3049.99,
                    "timestamp": "2026-12-05T10:30:00Z",
                },
            ]
        },
    )
    orderId: wire.Id
    reason: FailureReason = Field(
        description="Why nothing was taken; a consumer treats a value it does not know as a failure"
    )
    lines: list[ShortItem] | None = Field(None, description="The lines that could not be had")
    totalPrice: wire.Money | None = Field(
        None, description="The catalog total of the order's lines, when every product is known"
    )
    timestamp: wire.Timestamp = Field(description="When the order was refused")


ORDER_QTY_FAILED = EventType(
    name="order.qty_failed",
    version=2,
    payload=OrderQtyFailed,
    reads=FailedAnswer,
    publisher=Service.PRODUCTS,
    consumers=(Service.ORDERS,),
    requires="`orderId` (a missing `reason` is fine)",
    note=f"`reason` is `{FAILURE_REASON}` (with the short `lines`), `{PRICE_CHANGED_REASON}` "
    f"(with the catalog `totalPrice`), or `{CANCELLED_REASON}` for an order cancelled "
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
    ORDER_EXPIRED,
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
    "MAX_ORDER_LINES",
    "MAX_PRODUCT_UNITS",
    "PRICE_CHANGED_REASON",
    "TOTAL_OUT_OF_RANGE_REASON",
    "ORDER_CANCELLED",
    "ORDER_CREATED",
    "ORDER_EXPIRED",
    "ORDER_QTY_CONFIRMED",
    "ORDER_QTY_FAILED",
    "PRODUCT_CREATED",
    "EventType",
    "FailureReason",
    "Service",
    "consumed_by",
    "published_by",
]
