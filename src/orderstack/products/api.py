"""HTTP routes of the product service: translate requests to use cases and back.

``GET /products/{id}`` and ``POST /products`` each have one handler (``read_product``,
``post_product``) that their route and their fast path (web/hot.py) both call."""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from functools import lru_cache, partial
from typing import Annotated, Any, Literal, overload

import orjson
from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
)

from orderstack import wire
from orderstack.cache.port import EPOCH_HEADER
from orderstack.products.domain import (
    MAX_QTY,
    InsufficientStock,
    Product,
    ProductChanges,
    ProductNotFound,
    StockAdjustment,
    StockLimitExceeded,
    VersionMismatch,
)
from orderstack.products.service import ProductService
from orderstack.web.auth import Access, Caller, caller_of, depends_on
from orderstack.web.errors import ServiceError, error_body
from orderstack.web.hot import Answer, EntityPath, HotPath, JsonBodyPath
from orderstack.web.inputs import (
    Digits,
    EntityId,
    ExactJsonRoute,
    PositiveMoney,
)
from orderstack.web.responses import JsonResponse

# Characters a name or a reason never holds: controls (NUL among them: PostgreSQL refuses
# it), format characters (zero-width marks, bidirectional overrides that make a text read
# other than it is), surrogates, private-use and unassigned code points, line and paragraph
# separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _plain_text(value: str) -> str:
    """``value`` in NFC (one spelling per text: ``é`` is one code point whether sent
    composed or not); ValueError when it holds a control or format character."""
    if value.isascii() and value.isprintable():  # the common name: nothing to do
        return value
    value = unicodedata.normalize("NFC", value)
    if any(unicodedata.category(ch) in _REFUSED_CATEGORIES for ch in value):
        raise ValueError("must not contain control or format characters")
    return value


Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=255),
    AfterValidator(_plain_text),
]
Qty = Annotated[StrictInt, Field(ge=0, le=MAX_QTY)]


def _not_zero(value: int) -> int:
    if value == 0:
        raise ValueError("must not be 0")
    return value


Delta = Annotated[
    StrictInt,
    Field(ge=-MAX_QTY, le=MAX_QTY, json_schema_extra={"not": {"const": 0}}),
    AfterValidator(_not_zero),
]
Reason = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_plain_text),
]


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


class StockAdjustmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delta: Delta
    reason: Reason


class StockAdjustmentOut(BaseModel):
    id: int
    product_id: int
    delta: int
    reason: str
    qty_after: int
    created_at: datetime
    product: ProductOut


class ProductPage(BaseModel):
    items: list[ProductOut]
    total: int
    limit: int
    offset: int


class NestError(BaseModel):
    statusCode: int
    message: str | list[str]
    error: str


class NestRefusal(NestError):
    """A refusal on the product's current state: the NestJS body plus a machine code
    (``PRECONDITION_FAILED``, ``INSUFFICIENT_STOCK``, ``STOCK_LIMIT_EXCEEDED``) and, for
    the stock refusals, the current ``qty``."""

    code: str
    qty: int | None = None


def product_json(product: Product) -> dict[str, Any]:
    return {
        "id": product.id,
        "name": product.name,
        "price": wire.money(product.price),
        "qty": product.qty,
        "created_at": wire.timestamp(product.created_at),
        "updated_at": wire.timestamp(product.updated_at),
    }


def adjustment_json(adjustment: StockAdjustment, product: Product) -> dict[str, Any]:
    return {
        "id": adjustment.id,
        "product_id": adjustment.product_id,
        "delta": adjustment.delta,
        "reason": adjustment.reason,
        "qty_after": adjustment.qty_after,
        "created_at": wire.timestamp(adjustment.created_at),
        "product": product_json(product),
    }


def etag(product: Product) -> str:
    """The product's strong entity tag: its row version, which every change bumps."""
    return f'"{product.version}"'


def product_answer(status: int, product: Product, epoch: str | None = None) -> Answer:
    """A product's answer: its body, its ETag and, for a read, the epoch of the database it
    was read from."""
    headers = [(b"etag", etag(product).encode())]
    if epoch is not None:
        headers.append((EPOCH_HEADER.lower().encode(), epoch.encode()))
    return Answer(status, orjson.dumps(product_json(product)), tuple(headers))


# A read's answer, rendered once per (product, epoch): within one database's epoch a
# product's version names its content, but a fresh database starts again at version 1, so
# the product itself is the key. The most read are rendered once.
_read_answer = lru_cache(maxsize=4096)(product_answer)


@overload
async def read_product(
    service: ProductService, product_id: int, *, cached_only: Literal[False] = False
) -> Answer: ...
@overload
async def read_product(
    service: ProductService, product_id: int, *, cached_only: bool
) -> Answer | None: ...
async def read_product(
    service: ProductService, product_id: int, *, cached_only: bool = False
) -> Answer | None:
    """``GET /products/{product_id}``'s handler, for its route and its fast path. Read
    through the cache; a ServiceError 404 for a product unknown or deleted. With
    ``cached_only`` (the fast path): the cached product's answer, or None on a miss, a
    tombstone or a cache outage, having done nothing (the route then reads the row)."""
    if cached_only:
        found = await service.cached_product(product_id)
        if found is None:
            return None
        product = found
    else:
        try:
            product = await service.get_product(product_id)
        except ProductNotFound as exc:
            raise _not_found(exc) from None
    return _read_answer(200, product, service.epoch.value)


async def post_product(service: ProductService, new: ProductCreate, caller: Caller) -> Answer:
    """``POST /products``' handler, for its route and its fast path: 201, the product and
    its ETag. ``caller`` passed its guard (staff); the product does not record it."""
    product = await service.create_product(new.name, new.price, new.qty)
    return product_answer(201, product)


def product_fast_paths(service: ProductService, access: Access, *, max_body: int) -> list[HotPath]:
    """The fast paths (web/hot.py) into ``read_product`` (cache hits only) and
    ``post_product``, behind their routes' guards."""

    return [
        EntityPath(
            "/products/{product_id}",
            partial(read_product, service, cached_only=True),
            guard=access.catalog,
        ),
        JsonBodyPath(
            "POST",
            "/products",
            ProductCreate,
            partial(post_product, service),
            max_body=max_body,
            guard=access.staff,
        ),
    ]


def _with_etag(response: Response, product: Product) -> Response:
    response.headers["ETag"] = etag(product)
    return response


# A list of entity tags (RFC 9110 8.8.3), each maybe weak.
_ENTITY_TAG = r'(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"'
_ETAG_LIST = re.compile(rf"\s*{_ENTITY_TAG}\s*(?:,\s*{_ENTITY_TAG}\s*)*")
_TAG = re.compile(r'(W/)?"([^"]*)"')


def expected_versions(if_match: str | None) -> list[int] | None:
    """The versions an ``If-Match`` header accepts; None when it accepts any (absent or
    ``*``). Weak tags never match (If-Match compares strongly). Raises a 400 ServiceError
    when the header is not ``*`` or a list of entity tags."""
    if if_match is None or if_match.strip() == "*":
        return None
    if not _ETAG_LIST.fullmatch(if_match):
        raise ServiceError(
            400, "VALIDATION_ERROR", ['If-Match must be * or a list of entity tags ("7")']
        )
    return [
        int(value)
        for weak, value in _TAG.findall(if_match)
        if not weak and value.isascii() and value.isdigit() and int(value) <= wire.MAX_ID
    ]


def _refusal(status: int, code: str, message: str, qty: int | None = None) -> JsonResponse:
    body = error_body("nest", status, code, message, coded=True)
    if qty is not None:
        body["qty"] = qty
    return JsonResponse(body, status_code=status)


def _not_found(exc: ProductNotFound) -> ServiceError:
    return ServiceError(404, "NOT_FOUND", str(exc))


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": NestError},
    404: {"model": NestError},
    413: {"model": NestError},
}
_GUARDED: dict[int | str, dict[str, Any]] = {
    401: {"model": NestError, "description": "no valid bearer token"},
    403: {"model": NestError, "description": "the token's role may not"},
}
_ETAG_HEADER = {
    "ETag": {
        "description": 'The product\'s version as a strong entity tag, e.g. "7"; send it '
        "back in If-Match to update only that version.",
        "schema": {"type": "string"},
    }
}
_GET_HEADERS = _ETAG_HEADER | {
    EPOCH_HEADER: {
        "description": "The epoch of the product database the answer was read from (a "
        "random token renewed with the database): the order service trusts only cache "
        "entries of this epoch.",
        "schema": {"type": "string"},
    }
}
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='Apply only if the product is still at this version ("7", from the '
        "ETag of a GET); otherwise 412 and nothing changes. * or absent: no check.",
    ),
]


def product_router(access: Access) -> APIRouter:
    """The products' routes: reading the catalog behind ``access.catalog`` (open by
    default), every change behind the staff guard."""
    router = APIRouter(
        prefix="/products", tags=["products"], responses=_ERRORS, route_class=ExactJsonRoute
    )
    staff, reads = depends_on(access.staff), depends_on(access.catalog)
    read_refusals = _GUARDED if access.catalog is not None else {}

    def service(request: Request) -> ProductService:
        svc: ProductService = request.app.state.products
        return svc

    @router.post(
        "",
        status_code=201,
        response_model=ProductOut,
        responses={201: {"headers": _ETAG_HEADER}, **_GUARDED},
        dependencies=staff,
    )
    async def create_product(body: ProductCreate, request: Request) -> Response:
        return (await post_product(service(request), body, caller_of(request.scope))).response()

    @router.get("", response_model=ProductPage, responses=read_refusals, dependencies=reads)
    async def list_products(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=100), Digits] = 20,
        offset: Annotated[int, Query(ge=0, le=1_000_000_000), Digits] = 0,
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

    @router.get(
        "/{product_id}",
        response_model=ProductOut,
        responses={200: {"headers": _GET_HEADERS}, **read_refusals},
        dependencies=reads,
    )
    async def get_product(product_id: EntityId, request: Request) -> Response:
        return (await read_product(service(request), product_id)).response()

    @router.patch(
        "/{product_id}",
        response_model=ProductOut,
        responses={
            200: {"headers": _ETAG_HEADER},
            409: {"model": NestRefusal},
            412: {"model": NestRefusal},
            **_GUARDED,
        },
        dependencies=staff,
    )
    async def update_product(
        product_id: EntityId,
        body: ProductPatch,
        request: Request,
        if_match: IfMatch = None,
    ) -> Response:
        given = body.model_dump(exclude_unset=True)
        if any(value is None for value in given.values()):
            raise ServiceError(
                400,
                "VALIDATION_ERROR",
                [f"{k} must not be null" for k, v in given.items() if v is None],
            )
        changes = ProductChanges()
        if body.name is not None:
            changes["name"] = body.name
        if body.price is not None:
            changes["price"] = body.price
        if body.qty is not None:
            changes["qty"] = body.qty
        versions = expected_versions(if_match)
        try:
            product = await service(request).update_product(product_id, changes, versions)
        except ProductNotFound as exc:
            raise _not_found(exc) from None
        except VersionMismatch as exc:
            return _refusal(412, "PRECONDITION_FAILED", str(exc))
        except StockLimitExceeded as exc:
            return _refusal(409, "STOCK_LIMIT_EXCEEDED", str(exc), qty=exc.qty)
        return _with_etag(JsonResponse(product_json(product)), product)

    @router.post(
        "/{product_id}/stock-adjustments",
        status_code=201,
        response_model=StockAdjustmentOut,
        responses={201: {"headers": _ETAG_HEADER}, 409: {"model": NestRefusal}, **_GUARDED},
        dependencies=staff,
    )
    async def adjust_stock(
        product_id: EntityId, body: StockAdjustmentCreate, request: Request
    ) -> Response:
        """Add ``delta`` units to the stock (negative: remove them), relative to the stock
        at that moment, so concurrent sales are never erased; recorded in the stock ledger.
        409 ``INSUFFICIENT_STOCK`` (with the current ``qty``) when the stock would go
        below 0; nothing is changed then."""
        try:
            adjustment, product = await service(request).adjust_stock(
                product_id, body.delta, body.reason
            )
        except ProductNotFound as exc:
            raise _not_found(exc) from None
        except InsufficientStock as exc:
            return _refusal(409, "INSUFFICIENT_STOCK", str(exc), qty=exc.qty)
        except StockLimitExceeded as exc:
            return _refusal(409, "STOCK_LIMIT_EXCEEDED", str(exc), qty=exc.qty)
        response = JsonResponse(adjustment_json(adjustment, product), status_code=201)
        return _with_etag(response, product)

    @router.delete(
        "/{product_id}",
        status_code=204,
        response_class=Response,
        responses=_GUARDED,
        dependencies=staff,
    )
    async def delete_product(product_id: EntityId, request: Request) -> Response:
        try:
            await service(request).delete_product(product_id)
        except ProductNotFound as exc:
            raise _not_found(exc) from None
        return Response(status_code=204)

    return router
