"""How values look on the wire (HTTP bodies and event payloads): one place for both."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated

from pydantic import Field, WithJsonSchema

# Largest id any of our BIGINT columns holds; larger ids are rejected as invalid input.
MAX_ID = 2**63 - 1

# Field types of the event payload models (orderstack/events.py): what
# ``money`` and ``timestamp`` below produce, as the AsyncAPI document describes them.
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
Money = Annotated[
    int | float,
    WithJsonSchema(
        {"type": "number", "description": "Exact to the cent; whole amounts as integers"}
    ),
]
Timestamp = Annotated[
    str,
    Field(
        pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$",
        json_schema_extra={"format": "date-time", "examples": ["2025-09-20T10:30:00Z"]},
    ),
]


def money(value: Decimal) -> int | float:
    """A JSON number for an exact DECIMAL(12,2): an integer when whole, else the shortest
    float that prints back as the same decimal (exact for up to 15 significant digits)."""
    if value == value.to_integral_value():
        return int(value)
    return float(value)


def exact(value: int | float) -> Decimal:
    """The amount a JSON number of ``money`` stands for, exactly (to the cent)."""
    return Decimal(str(value)).quantize(Decimal("0.01"))


def timestamp(value: datetime) -> str:
    """ISO 8601 in UTC, seconds precision, as the seed shows: ``2025-09-20T10:30:00Z``."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    # isoformat is several times cheaper than strftime (on every order and product answer).
    return value.isoformat(timespec="seconds")[:19] + "Z"
