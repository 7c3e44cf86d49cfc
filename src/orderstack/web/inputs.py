"""Input types shared by both APIs: ids and counts written in digits, within the column's
range; exact money from JSON (``read_json`` keeps every number as written)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Annotated, Any

from fastapi import Path, Request, Response
from fastapi.routing import APIRoute
from pydantic import BeforeValidator, Field, StrictInt, WithJsonSchema

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


def _money_schema(lowest: str) -> WithJsonSchema:
    """What the OpenAPI document says of money: a JSON number (strings are refused), at
    most two decimals, bounded; ``lowest`` is ``minimum`` or ``exclusiveMinimum`` (0)."""
    return WithJsonSchema(
        {
            "type": "number",
            lowest: 0,
            "maximum": float(MAX_MONEY),
            "description": "a JSON number with at most two decimals, read exactly",
        }
    )


Money = Annotated[Decimal, BeforeValidator(_json_number), Field(le=MAX_MONEY, decimal_places=2)]
PositiveMoney = Annotated[Money, Field(gt=0), _money_schema("exclusiveMinimum")]
NonNegativeMoney = Annotated[Money, Field(ge=0), _money_schema("minimum")]

# An id's schema with its bound as the integer it is (pydantic writes 2^63 - 1 as a float,
# which reads back as 2^63).
_ID_SCHEMA = WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_ID})
JsonId = Annotated[StrictInt, Field(ge=1, le=MAX_ID), _ID_SCHEMA]


def _digits(value: Any) -> Any:
    """A path or query integer as a client writes one: ASCII digits only. Python's int()
    would also take a sign, spaces, underscores (``1_0``), or pydantic ``1.0``: each of
    those names another number than the client may think, so each is invalid input."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be a whole number written in digits (0-9 only)")
    return value


Digits = BeforeValidator(_digits)

EntityId = Annotated[int, Path(ge=1, le=MAX_ID), Digits, _ID_SCHEMA]


def read_json(body: bytes) -> Any:
    """The request body as JSON, every number read exactly: a fraction as a Decimal (never
    through a binary float, which would turn 1.0000000000000001 into 1), an integer as an
    int. Raises json.JSONDecodeError for anything that is not JSON text: invalid UTF-8,
    NaN or Infinity, an integer too long to read, nesting too deep to parse, an object
    whose names repeat."""
    try:
        return json.loads(
            body,
            parse_float=Decimal,
            parse_constant=_no_constant,
            object_pairs_hook=_unique_names,
        )
    except json.JSONDecodeError:
        raise
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, int digits, nesting
        raise json.JSONDecodeError(f"not JSON text: {exc}", "", 0) from None


def _unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose names repeat is refused: parsers disagree on which value counts
    (``{"product_id": "x", "product_id": 1}``: the first, the last, or an error), so a
    proxy in front may read another request than the service would."""
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise ValueError(f"the name {name!r} appears twice in one object")
            seen.add(name)
    return doc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class _ExactJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = read_json(await self.body())
        return self._json


class ExactJsonRoute(APIRoute):
    """The APIRoute every router of both services uses: a JSON body is read by
    ``read_json``, so money arrives exact, and any body that is not JSON text is the
    route's 400 ``INVALID_JSON``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def exact(request: Request) -> Response:
            return await handle(_ExactJsonRequest(request.scope, request.receive))

        return exact
