"""HTTP routes of the product service: translate requests to use cases and back."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints

from orderstack import wire
from orderstack.products.domain import Product, ProductNotFound
from orderstack.products.service import ProductService
from orderstack.web.errors import ServiceError
from orderstack.web.inputs import EntityId, PositiveMoney
from orderstack.web.responses import JsonResponse

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
Qty = Annotated[StrictInt, Field(ge=0, le=2_147_483_647)]


class ProductCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    price: PositiveMoney
    qty: Qty


class ProductPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name | None = None
    price: PositiveMoney | None = None
    qty: Qty | None = None


class ProductOut(BaseModel):
    id: int
    name: str
    price: float
    qty: int
    created_at: datetime
    updated_at: datetime


class ProductPage(BaseModel):
    items: list[ProductOut]
    total: int
    limit: int
    offset: int


class NestError(BaseModel):
    statusCode: int
    message: str | list[str]
    error: str


def product_json(product: Product) -> dict[str, Any]:
    return {
        "id": product.id,
        "name": product.name,
        "price": wire.money(product.price),
        "qty": product.qty,
        "created_at": wire.timestamp(product.created_at),
        "updated_at": wire.timestamp(product.updated_at),
    }


def _not_found(exc: ProductNotFound) -> ServiceError:
    return ServiceError(404, "NOT_FOUND", str(exc))


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": NestError},
    404: {"model": NestError},
    413: {"model": NestError},
}


def product_router() -> APIRouter:
    router = APIRouter(prefix="/products", tags=["products"], responses=_ERRORS)

    def service(request: Request) -> ProductService:
        svc: ProductService = request.app.state.products
        return svc

    @router.post("", status_code=201, response_model=ProductOut)
    async def create_product(body: ProductCreate, request: Request) -> Response:
        product = await service(request).create_product(body.name, body.price, body.qty)
        return JsonResponse(product_json(product), status_code=201)

    @router.get("", response_model=ProductPage)
    async def list_products(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    ) -> Response:
        items, total = await service(request).list_products(limit, offset)
        return JsonResponse(
            {
                "items": [product_json(p) for p in items],
                "total": total,
                "limit": limit,
                "offset": offset,
            }
        )

    @router.get("/{product_id}", response_model=ProductOut)
    async def get_product(product_id: EntityId, request: Request) -> Response:
        try:
            product = await service(request).get_product(product_id)
        except ProductNotFound as exc:
            raise _not_found(exc) from None
        return JsonResponse(product_json(product))

    @router.patch("/{product_id}", response_model=ProductOut)
    async def update_product(
        product_id: EntityId, body: ProductPatch, request: Request
    ) -> Response:
        changes = body.model_dump(exclude_unset=True)
        if any(value is None for value in changes.values()):
            raise ServiceError(
                400,
                "VALIDATION_ERROR",
                [f"{k} must not be null" for k, v in changes.items() if v is None],
            )
        try:
            product = await service(request).update_product(product_id, changes)
        except ProductNotFound as exc:
            raise _not_found(exc) from None
        return JsonResponse(product_json(product))

    @router.delete("/{product_id}", status_code=204, response_class=Response)
    async def delete_product(product_id: EntityId, request: Request) -> Response:
        try:
            await service(request).delete_product(product_id)
        except ProductNotFound as exc:
            raise _not_found(exc) from None
        return Response(status_code=204)

    return router
