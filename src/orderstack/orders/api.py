"""HTTP routes of the order service: translate requests to use cases and back."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from orderstack import wire
from orderstack.orders.domain import (
    CatalogUnavailable,
    IdempotencyKeyReused,
    Order,
    OrderNotFound,
    ProductNotFound,
)
from orderstack.orders.service import OrderService
from orderstack.web.errors import ServiceError
from orderstack.web.inputs import MAX_ID, EntityId, NonNegativeMoney
from orderstack.web.responses import JsonResponse

_Id = Annotated[StrictInt, Field(ge=1, le=MAX_ID)]


class OrderCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    product_id: _Id
    total_price: NonNegativeMoney


class OrderOut(BaseModel):
    id: int
    product_id: int
    total_price: float
    status: Literal["pending", "confirmed", "failed"]
    created_at: datetime


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


def order_json(order: Order) -> dict[str, Any]:
    return {
        "id": order.id,
        "product_id": order.product_id,
        "total_price": wire.money(order.total_price),
        "status": order.status.value,
        "created_at": wire.timestamp(order.created_at),
    }


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


def _service(request: Request) -> OrderService:
    service: OrderService = request.app.state.orders
    return service


def order_router() -> APIRouter:
    router = APIRouter(prefix="/orders", tags=["orders"], responses=_ERRORS)

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
        try:
            order, created = await _service(request).create_order(
                body.product_id, body.total_price, idempotency_key
            )
        except ProductNotFound:
            raise ServiceError(
                400, "PRODUCT_NOT_FOUND", f"product {body.product_id} not found"
            ) from None
        except CatalogUnavailable as exc:
            raise _unavailable(exc) from None
        except IdempotencyKeyReused:
            raise ServiceError(
                422,
                "IDEMPOTENCY_KEY_REUSED",
                "this Idempotency-Key was used for a different request; use a new key",
            ) from None
        headers = {} if created else {"Idempotent-Replayed": "true"}
        return JsonResponse(order_json(order), status_code=201, headers=headers)

    @router.get("/{order_id}", response_model=OrderOut, responses={404: {"model": SeedError}})
    async def get_order(order_id: EntityId, request: Request) -> Response:
        try:
            order = await _service(request).get_order(order_id)
        except OrderNotFound:
            raise ServiceError(404, "ORDER_NOT_FOUND", "order not found") from None
        return JsonResponse(order_json(order))

    @router.get("/product/{product_id}", response_model=list[OrderOut])
    async def orders_for_product(
        product_id: EntityId,
        request: Request,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> Response:
        found = await _service(request).orders_for_product(product_id, limit)
        return JsonResponse([order_json(o) for o in found])

    return router


def admin_router(guard: Any) -> APIRouter:
    router = APIRouter(
        prefix="/admin",
        tags=["admin"],
        dependencies=[Depends(guard)],
        responses={**_ERRORS, 401: {"model": SeedError}, 403: {"model": SeedError}},
    )

    @router.post("/cache/warmup", response_model=WarmupResult)
    async def warm_cache(body: WarmupRequest, request: Request) -> Response:
        try:
            cached, not_found = await _service(request).warm_cache(body.product_ids)
        except CatalogUnavailable as exc:
            raise _unavailable(exc) from None
        return JsonResponse({"cached": cached, "not_found": not_found})

    return router
