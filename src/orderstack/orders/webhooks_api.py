"""``/admin/webhooks``: register, list and remove the URLs order status changes are posted to
(orders/webhooks.py). Admins only: the service calls these URLs itself, so whoever registers
one chooses where this service's requests go (a customer could aim them at the internal
network). Present with ``ORDER_WEBHOOKS=true`` only."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Request, Response
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator

from orderstack.orders.status_events import StatusEventLog
from orderstack.orders.webhooks import SECRET_PREFIX, WebhookStore, hooks_json, new_secret
from orderstack.web.auth import Access, depends_on
from orderstack.web.errors import ServiceError
from orderstack.web.inputs import MAX_ID, EntityId, ExactJsonRoute
from orderstack.web.responses import JsonResponse


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: Annotated[AnyHttpUrl, Field(description="http or https; posted each batch of changes")]
    customer_id: Annotated[str | None, Field(min_length=1, max_length=255)] = Field(
        None, description="only this customer's orders (absent: every order)"
    )
    secret: Annotated[str | None, Field(min_length=16, max_length=128)] = Field(
        None,
        description="signs each POST: whsec_ and the base64 of 24 to 64 bytes, as Standard"
        " Webhooks (absent: one is made and answered once)",
    )
    after_id: Annotated[int | None, Field(ge=0, le=MAX_ID)] = Field(
        None, description="send the changes after this event id (absent: from the next one)"
    )

    @field_validator("secret")
    @classmethod
    def _standard_secret(cls, secret: str | None) -> str | None:
        """A ``whsec_`` secret must decode (its bytes are the key, as a receiver's Standard
        Webhooks library takes them); any other is its UTF-8 bytes (docs/api.md)."""
        if secret is not None and secret.startswith(SECRET_PREFIX):
            try:
                key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("a whsec_ secret is whsec_ and base64") from None
            if not 24 <= len(key) <= 64:
                raise ValueError("a whsec_ secret's key is 24 to 64 bytes")
        return secret


class WebhookOut(BaseModel):
    id: int
    url: str
    customer_id: str | None
    after_id: int = Field(description="the last event id the URL acknowledged")
    attempts: int = Field(0, description="failed deliveries in a row")
    last_error: str | None = None
    status: str = Field("active", description="active, or paused: a delivery dead (docs/api.md)")
    secret: str | None = Field(None, description="only in the answer that created it")


def webhook_router(access: Access, store: WebhookStore, history: StatusEventLog) -> APIRouter:
    router = APIRouter(
        prefix="/admin/webhooks",
        tags=["admin"],
        route_class=ExactJsonRoute,
        dependencies=depends_on(access.admin),
        responses={
            401: {"description": "UNAUTHORIZED: no valid bearer token"},
            403: {"description": "FORBIDDEN: not an admin"},
        },
    )

    @router.post(
        "",
        status_code=201,
        response_model=WebhookOut,
        responses={400: {"description": "VALIDATION_ERROR: a url not http(s), say"}},
    )
    async def create_webhook(body: WebhookIn, request: Request) -> Response:
        """Register a URL: each status change (of the customer's orders, or of every order)
        is posted to it, signed, in order, at least once (docs/api.md)."""
        secret = body.secret or new_secret()
        after = body.after_id if body.after_id is not None else await history.last_id()
        hook = await store.add(str(body.url), secret, body.customer_id, after)
        return JsonResponse({**hooks_json([hook])[0], "secret": secret}, status_code=201)

    @router.get("", response_model=list[WebhookOut])
    async def list_webhooks() -> Response:
        return JsonResponse(hooks_json(await store.all()))

    @router.delete(
        "/{hook_id}",
        status_code=204,
        responses={
            400: {"description": "VALIDATION_ERROR: not an id"},
            404: {"description": "WEBHOOK_NOT_FOUND"},
        },
    )
    async def delete_webhook(hook_id: EntityId) -> Response:
        if not await store.remove(hook_id):
            raise ServiceError(404, "WEBHOOK_NOT_FOUND", "webhook not found")
        return Response(status_code=204)

    return router


__all__ = ["webhook_router"]
