"""Input types shared by both APIs: ids within the column's range, exact money from JSON."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Annotated, Any

from fastapi import Path
from pydantic import BeforeValidator, Field

from orderstack.wire import MAX_ID

MAX_MONEY = Decimal("9999999999.99")


def _json_number(value: Any) -> Decimal:
    """Accept a JSON number only (not a string, not a boolean), read exactly as written."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError("must be a number")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return Decimal(repr(value))
    return Decimal(value)


Money = Annotated[Decimal, BeforeValidator(_json_number), Field(le=MAX_MONEY, decimal_places=2)]
PositiveMoney = Annotated[Money, Field(gt=0)]
NonNegativeMoney = Annotated[Money, Field(ge=0)]

EntityId = Annotated[int, Path(ge=1, le=MAX_ID)]
