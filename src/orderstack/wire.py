"""How values look on the wire (HTTP bodies and event payloads): one place for both."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

# Largest id any of our BIGINT columns holds; larger ids are rejected as invalid input.
MAX_ID = 2**63 - 1


def money(value: Decimal) -> int | float:
    """A JSON number for an exact DECIMAL(12,2): an integer when whole, else the shortest
    float that prints back as the same decimal (exact for up to 15 significant digits)."""
    if value == value.to_integral_value():
        return int(value)
    return float(value)


def timestamp(value: datetime) -> str:
    """ISO 8601 in UTC, seconds precision, as the seed shows: ``2025-09-20T10:30:00Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
