"""HTTP routes of the order service: translate requests to use cases and back.

``POST /orders`` has one handler (``post_order``) that its route and its fast path
(web/hot.py) both call."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Annotated, Any, Literal, Self

import orjson
from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    model_validator,
)
from pydantic_core import PydanticCustomError

from orderstack import wire
from orderstack.orders.domain import (
    MAX_HOLD_SECONDS,
    MAX_ORDER_LINES,
    MAX_ORDER_QUANTITY,
    MAX_PAYMENT_REFERENCE,
    MIN_HOLD_SECONDS,
    CatalogUnavailable,
    IdempotencyKeyReused,
    Order,
    OrderExpired,
    OrderLine,
    OrderNotCancellable,
    OrderNotFound,
    OrderNotReserved,
    OrderStatus,
    UnknownProduct,
)
from orderstack.orders.service import OrderPage, OrderService
from orderstack.web.auth import Access, Caller, caller_of, depends_on
from orderstack.web.errors import ServiceError
from orderstack.web.hot import Answer, HotPath, JsonBodyPath
from orderstack.web.inputs import (
    MAX_ID,
    Digits,
    EntityId,
    ExactJsonRoute,
    JsonId,
    NonNegativeMoney,
)
from orderstack.web.responses import JsonResponse

_Id = JsonId


# Fields a client may spell either way: the SPEC's snake_case or the camelCase the seed's Go
# service binds and its load test sends. A field spelled alike in both (``quantity``) needs
# no entry. Answers are always snake_case.
_CAMEL_CASE = {"product_id": "productId", "total_price": "totalPrice"}


def _either_spelling(snake: str) -> AliasChoices:
    return AliasChoices(snake, _CAMEL_CASE[snake])


def _refuse_doubled(data: Any) -> Any:
    if isinstance(data, dict):
        doubled = [
            f"{s} and {c} are one field; send only one of them"
            for s, c in _CAMEL_CASE.items()
            if s in data and c in data
        ]
        if doubled:
            raise PydanticCustomError("doubled_field", "{text}", {"text": "; ".join(doubled)})
    return data


def _both_spellings(schema: dict[str, Any], pairs: dict[str, str]) -> list[dict[str, Any]]:
    """OpenAPI: each field of ``pairs`` under both names; returns the rules that a body
    sends at most one of them. An optional field is documented by its type alone (absent
    is how a client leaves it out), so that generated clients see a plain number."""
    properties = schema["properties"]
    for snake in pairs:
        variants = properties[snake].pop("anyOf", None)
        if variants is not None:
            properties[snake].update(next(v for v in variants if v.get("type") != "null"))
            properties[snake].pop("default", None)
    for snake, camel in pairs.items():
        properties[camel] = {**properties[snake], "title": camel}
    return [{"not": {"required": [snake, camel]}} for snake, camel in pairs.items()]


def _document_line(schema: dict[str, Any]) -> None:
    rules = _both_spellings(schema, {"product_id": "productId"})
    schema.pop("required", None)
    schema["allOf"] = [
        *rules,
        {"oneOf": [{"required": ["product_id"]}, {"required": ["productId"]}]},
    ]


def _document_order(schema: dict[str, Any]) -> None:
    """OpenAPI: every field under both names, and exactly one way of naming the lines, so a
    generated client can send either and a schema-valid body is never refused for it."""
    rules = _both_spellings(schema, _CAMEL_CASE)
    schema.pop("required", None)
    schema["allOf"] = [
        *rules,
        {
            "oneOf": [
                {"required": ["product_id"]},
                {"required": ["productId"]},
                {"required": ["items"]},
            ]
        },
        {"not": {"required": ["items", "quantity"]}},
    ]
    schema["examples"] = [
        {"product_id": 1, "total_price": 1500},
        {"productId": 1, "totalPrice": 1500},
        {"product_id": 1, "total_price": 4500, "quantity": 3},
        {"items": [{"product_id": 1, "quantity": 2}, {"product_id": 2, "quantity": 1}]},
    ]


_LineQuantity = Annotated[StrictInt, Field(ge=1, le=MAX_ORDER_QUANTITY)]


class OrderLineIn(BaseModel):
    """A line: units of a product (``product_id`` or ``productId``; ``quantity`` absent
    means 1)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_document_line)
    product_id: _Id = Field(validation_alias=_either_spelling("product_id"))
    quantity: _LineQuantity = Field(
        1, description=f"units of the product, 1 to {MAX_ORDER_QUANTITY}; absent means 1"
    )

    _one_spelling = model_validator(mode="before")(_refuse_doubled)


class OrderCreate(BaseModel):
    """A new order: its ``items`` (1 to 100 lines; a product on two lines is one demand),
    or the seed's one line, ``product_id`` and ``quantity``. ``total_price``: the total the
    client agreed to (absent: the catalog prices the order). Each field in snake_case or in
    camelCase (not both); no other field."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_document_order)
    product_id: _Id | None = Field(None, validation_alias=_either_spelling("product_id"))
    total_price: NonNegativeMoney | None = Field(
        None,
        validation_alias=_either_spelling("total_price"),
        description="the total the client agreed to; absent: priced by the catalog",
    )
    quantity: _LineQuantity = Field(
        1,
        description=f"one-line order: units of the product, 1 to {MAX_ORDER_QUANTITY}; "
        "absent means 1",
    )
    items: Annotated[list[OrderLineIn], Field(min_length=1, max_length=MAX_ORDER_LINES)] | None = (
        Field(None, description=f"the order's lines, 1 to {MAX_ORDER_LINES}")
    )
    hold_seconds: Annotated[StrictInt, Field(ge=MIN_HOLD_SECONDS, le=MAX_HOLD_SECONDS)] | None = (
        Field(
            None,
            description=f"place it as a hold: once its units are taken it is `reserved` for this "
            f"many seconds ({MIN_HOLD_SECONDS} to {MAX_HOLD_SECONDS}) until confirmed "
            "(`POST /orders/{id}/confirm`), else it expires and its units go back; absent: "
            "ORDER_HOLD_SECONDS (0 by default: no hold)",
        )
    )

    _one_spelling = model_validator(mode="before")(_refuse_doubled)

    @model_validator(mode="after")
    def _one_way_of_naming_lines(self) -> Self:
        if self.items is not None and (
            self.product_id is not None or "quantity" in self.model_fields_set
        ):
            raise PydanticCustomError(
                "lines_twice", "send items, or product_id and quantity, not both"
            )
        if self.items is None and self.product_id is None:
            raise PydanticCustomError("no_lines", "send items, or product_id")
        return self

    @property
    def lines(self) -> tuple[OrderLine, ...]:
        if self.items is not None:
            return tuple(OrderLine(item.product_id, item.quantity) for item in self.items)
        assert self.product_id is not None
        return (OrderLine(self.product_id, self.quantity),)


class OrderLineOut(BaseModel):
    product_id: int
    quantity: int
    unit_price: float | None = Field(description="from the catalog, once reserved")
    line_total: float | None = Field(description="unit_price × quantity, once reserved")


class ShortLineOut(BaseModel):
    product_id: int
    requested: int
    available: int


class FailureOut(BaseModel):
    reason: str | None = Field(
        description="product_not_found_or_unavailable (see lines), price_changed (see "
        "catalog_total), cancelled, total_out_of_range"
    )
    lines: list[ShortLineOut] = Field(description="the lines that could not be had")
    catalog_total: float | None = Field(
        description="the catalog total of the order's lines, when every product is known"
    )


class OrderOut(BaseModel):
    id: int
    product_id: int | None = Field(None, description="a one-line order's product")
    quantity: int | None = Field(None, description="a one-line order's units")
    total_price: float | None = Field(
        description="the client's total, else the catalog's once reserved (null until)"
    )
    status: Literal["pending", "confirmed", "failed", "cancelled", "reserved", "expired"]
    created_at: datetime
    items: list[OrderLineOut]
    failure: FailureOut | None = Field(None, description="why a failed order failed")
    customer_id: str | None = Field(
        None, description="who placed it: its token's subject (absent: placed without one)"
    )
    hold_seconds: int | None = Field(None, description="placed as a hold of this many seconds")
    expires_at: datetime | None = Field(
        None,
        description="a reserved or expired order: when its hold ends or ended (database clock)",
    )
    payment_reference: str | None = Field(
        None, description="a confirmed hold: what its client sent with the confirm"
    )


class ConfirmRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Printable ASCII without spaces (a payment provider's id): no control character (NUL:
    # PostgreSQL refuses it), nothing that reads other than it is in a log or on the page.
    payment_reference: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_PAYMENT_REFERENCE,
        pattern=r"^[!-~]+$",
        description="recorded as sent: printable ASCII, no spaces",
    )


class WarmupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    product_ids: Annotated[list[_Id], Field(min_length=1, max_length=1000)]


class WarmupResult(BaseModel):
    cached: list[int]
    not_found: list[int]


class SeedError(BaseModel):
    error: str
    code: str
    timestamp: str


def _money(value: Decimal | None) -> int | float | None:
    return None if value is None else wire.money(value)


def order_json(order: Order) -> dict[str, Any]:
    body: dict[str, Any] = {"id": order.id}
    if len(order.items) == 1:
        body["product_id"] = order.items[0].product_id
        body["quantity"] = order.items[0].quantity
    body["total_price"] = _money(order.total_price)
    body["status"] = order.status.value
    body["created_at"] = wire.timestamp(order.created_at)
    body["items"] = [
        {
            "product_id": line.product_id,
            "quantity": line.quantity,
            "unit_price": _money(line.unit_price),
            "line_total": _money(line.line_total),
        }
        for line in order.items
    ]
    failure = order.failure
    if failure is not None and order.status is OrderStatus.FAILED:
        body["failure"] = {
            "reason": failure.reason,
            "lines": [
                {"product_id": s.product_id, "requested": s.requested, "available": s.available}
                for s in failure.short
            ],
            "catalog_total": _money(failure.catalog_total),
        }
    if order.customer_id is not None:
        body["customer_id"] = order.customer_id
    if order.hold_seconds is not None:
        body["hold_seconds"] = order.hold_seconds
        if order.expires_at is not None and order.status in _HOLD_ENDS_SHOWN:
            body["expires_at"] = wire.timestamp(order.expires_at)
        if order.payment_reference is not None:
            body["payment_reference"] = order.payment_reference
    return body


_HOLD_ENDS_SHOWN = frozenset({OrderStatus.RESERVED, OrderStatus.EXPIRED})


def _unavailable(exc: CatalogUnavailable) -> ServiceError:
    return ServiceError(
        503,
        "PRODUCT_SERVICE_UNAVAILABLE",
        "product service unavailable and product not cached; retry later",
    )


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": SeedError},
    413: {"model": SeedError},
    503: {"model": SeedError},
}
_GUARDED: dict[int | str, dict[str, Any]] = {
    401: {"model": SeedError, "description": "UNAUTHORIZED: no valid bearer token"},
    403: {"model": SeedError, "description": "FORBIDDEN: the token's role may not"},
}


# Pages of orders: a plain JSON array (the seed's body), and the next page's address in a
# Link header when there is one. ``after`` is the last id of the page before.
_After = Annotated[
    int, Query(ge=0, le=MAX_ID, description="the last order id already seen"), Digits
]
_PAGED: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": {
            "Link": {
                "description": 'the next page, `<url>; rel="next"`, when this one is not the'
                " last (absent on the last page)",
                "schema": {"type": "string"},
            }
        }
    }
}


def _page_response(request: Request, page: OrderPage, limit: int) -> Response:
    headers = {}
    if page.next_after is not None:
        # The same query (filters included) with the cursor moved on, under the configured
        # PUBLIC_BASE_URL or relative: never under the request's Host header, which a
        # client or a proxy in front sets to anything (a cache would then hand others a
        # link to the host it names).
        url = request.url.include_query_params(after=page.next_after, limit=limit)
        base = getattr(request.app.state, "public_base_url", None) or ""
        headers["Link"] = f'<{base}{url.path}?{url.query}>; rel="next"'
    return JsonResponse([order_json(o) for o in page.orders], headers=headers)


async def place_order(
    service: OrderService, body: OrderCreate, caller: Caller, idempotency_key: str | None
) -> tuple[Order, bool]:
    """``POST /orders``' use case, its refusals as ServiceErrors (``post_order`` answers
    through it). The order is the caller's (its subject; none with auth off)."""
    try:
        return await service.create_order(
            total_price=body.total_price,
            request_id=idempotency_key,
            items=body.lines,
            customer_id=caller.subject,
            hold_seconds=body.hold_seconds,
        )
    except UnknownProduct as exc:
        message = ", ".join(f"product {pid} not found" for pid in exc.product_ids)
        raise ServiceError(400, "PRODUCT_NOT_FOUND", message) from None
    except CatalogUnavailable as exc:
        raise _unavailable(exc) from None
    except IdempotencyKeyReused:
        raise ServiceError(
            422,
            "IDEMPOTENCY_KEY_REUSED",
            "this Idempotency-Key was used for a different request; use a new key",
        ) from None


_REPLAYED = ((b"idempotent-replayed", b"true"),)


async def post_order(
    service: OrderService, body: OrderCreate, caller: Caller, idempotency_key: str | None
) -> Answer:
    """``POST /orders``' handler, for its route and its fast path: 201 and the order
    (``Idempotent-Replayed: true`` when a retried key found it placed already); the
    refusals of ``place_order`` as ServiceErrors."""
    order, created = await place_order(service, body, caller, idempotency_key)
    return Answer(201, orjson.dumps(order_json(order)), () if created else _REPLAYED)


def order_fast_paths(service: OrderService, access: Access, *, max_body: int) -> list[HotPath]:
    """The fast path (web/hot.py) into ``post_order``, for a JSON body that validates and
    no ``Idempotency-Key`` (the route reads and checks the header), behind the route's
    guard."""

    return [
        JsonBodyPath(
            "POST",
            "/orders",
            OrderCreate,
            partial(post_order, service, idempotency_key=None),
            max_body=max_body,
            route_headers=(b"idempotency-key",),
            guard=access.customer,
        )
    ]


def _service(request: Request) -> OrderService:
    service: OrderService = request.app.state.orders
    return service


def order_router(access: Access) -> APIRouter:
    """The orders' routes, each behind the customer guard: a customer places orders and
    reads and cancels its own (another's is 404), staff and admins every order."""
    router = APIRouter(
        prefix="/orders",
        tags=["orders"],
        responses={**_ERRORS, **_GUARDED},
        route_class=ExactJsonRoute,
        dependencies=depends_on(access.customer),
    )

    @router.post(
        "",
        status_code=201,
        response_model=OrderOut,
        responses={422: {"model": SeedError, "description": "IDEMPOTENCY_KEY_REUSED"}},
    )
    async def create_order(
        body: OrderCreate,
        request: Request,
        idempotency_key: Annotated[str | None, Header(min_length=1, max_length=64)] = None,
    ) -> Response:
        caller = caller_of(request.scope)
        return (await post_order(_service(request), body, caller, idempotency_key)).response()

    @router.get("/{order_id}", response_model=OrderOut, responses={404: {"model": SeedError}})
    async def get_order(order_id: EntityId, request: Request) -> Response:
        try:
            order = await _service(request).get_order(
                order_id, owner=caller_of(request.scope).owner
            )
        except OrderNotFound:
            raise ServiceError(404, "ORDER_NOT_FOUND", "order not found") from None
        return JsonResponse(order_json(order))

    @router.post(
        "/{order_id}/cancel",
        response_model=OrderOut,
        responses={
            404: {"model": SeedError},
            409: {"model": SeedError, "description": "ORDER_NOT_CANCELLABLE (it failed)"},
        },
    )
    async def cancel_order(order_id: EntityId, request: Request) -> Response:
        """Cancel a pending or confirmed order: it becomes ``cancelled`` and its units go
        back to stock, once. Again on a cancelled order: 200, nothing changes."""
        try:
            order, _ = await _service(request).cancel_order(
                order_id, owner=caller_of(request.scope).owner
            )
        except OrderNotFound:
            raise ServiceError(404, "ORDER_NOT_FOUND", "order not found") from None
        except OrderNotCancellable as exc:
            raise ServiceError(
                409,
                "ORDER_NOT_CANCELLABLE",
                f"order {order_id} is {exc.status}; only a "
                "pending, reserved or confirmed order can be cancelled",
            ) from None
        return JsonResponse(order_json(order))

    @router.post(
        "/{order_id}/confirm",
        response_model=OrderOut,
        responses={
            404: {"model": SeedError},
            409: {
                "model": SeedError,
                "description": "ORDER_NOT_RESERVED (pending, failed, cancelled), "
                "ORDER_EXPIRED (its hold ended; its units went back)",
            },
        },
    )
    async def confirm_order(
        order_id: EntityId, request: Request, body: ConfirmRequest | None = None
    ) -> Response:
        """Confirm a reserved order (placed with ``hold_seconds``) before its
        ``expires_at``: it becomes ``confirmed`` and keeps its units. Again on a confirmed
        order: 200, the same answer."""
        reference = body.payment_reference if body is not None else None
        try:
            order, _ = await _service(request).confirm_order(
                order_id, payment_reference=reference, owner=caller_of(request.scope).owner
            )
        except OrderNotFound:
            raise ServiceError(404, "ORDER_NOT_FOUND", "order not found") from None
        except OrderExpired as exc:
            ended = exc.order.expires_at
            when = f" at {wire.timestamp(ended)}" if ended is not None else ""
            raise ServiceError(
                409,
                "ORDER_EXPIRED",
                f"order {order_id} expired{when}: its hold ended and its units went back; "
                "place it again",
            ) from None
        except OrderNotReserved as exc:
            raise ServiceError(
                409,
                "ORDER_NOT_RESERVED",
                f"order {order_id} is {exc.status}; only a reserved order can be confirmed"
                + (" (its units are not taken yet: retry)" if exc.status == "pending" else ""),
            ) from None
        return JsonResponse(order_json(order))

    @router.get("", response_model=list[OrderOut], responses=_PAGED)
    async def list_orders(
        request: Request,
        status: Annotated[OrderStatus | None, Query()] = None,
        product_id: Annotated[int | None, Query(ge=1, le=MAX_ID), Digits] = None,
        after: _After = 0,
        limit: Annotated[int, Query(ge=1, le=1000), Digits] = 100,
    ) -> Response:
        """Orders oldest first (by id), filtered by ``status`` and ``product_id`` when given;
        a page that is not the last has a ``Link: <…>; rel="next"`` header."""
        page = await _service(request).list_orders(
            status=status,
            product_id=product_id,
            owner=caller_of(request.scope).owner,
            after=after,
            limit=limit,
        )
        return _page_response(request, page, limit)

    @router.get("/product/{product_id}", response_model=list[OrderOut], responses=_PAGED)
    async def orders_for_product(
        product_id: EntityId,
        request: Request,
        after: _After = 0,
        limit: Annotated[int, Query(ge=1, le=10_000), Digits] = 1000,
    ) -> Response:
        """The product's orders oldest first; a page that is not the last has a
        ``Link: <…>; rel="next"`` header."""
        owner = caller_of(request.scope).owner
        page = await _service(request).orders_for_product(product_id, limit, after, owner=owner)
        return _page_response(request, page, limit)

    return router


def admin_router(access: Access) -> APIRouter:
    router = APIRouter(
        prefix="/admin",
        tags=["admin"],
        route_class=ExactJsonRoute,
        dependencies=depends_on(access.admin),
        responses={**_ERRORS, **_GUARDED},
    )

    @router.post("/cache/warmup", response_model=WarmupResult)
    async def warm_cache(body: WarmupRequest, request: Request) -> Response:
        try:
            cached, not_found = await _service(request).warm_cache(body.product_ids)
        except CatalogUnavailable as exc:
            raise _unavailable(exc) from None
        return JsonResponse({"cached": cached, "not_found": not_found})

    return router
