"""The page at ``/``: a person creates products, fills a basket of several lines and places
it as one order at the total the basket shows, cancels orders, and watches each settle, a
failed one with its reason (``page_assets.py`` holds its HTML, CSS and JavaScript: no build
step, nothing from outside this service).

The products live on the product service, another origin. Rather than open CORS there, the
order service relays the two product calls the page needs, ``GET /ui/products`` and
``POST /ui/products``, to the product service's ``/products`` as they are (body, status and
error shape unchanged, the caller's ``Authorization`` passed on: the product service decides).

With authentication on, the page works as a single-page app does: the person pastes a
bearer token (``orderstack token``, or their identity provider's) into the page's token
field; it is kept in the tab's ``sessionStorage`` (gone with the tab, never in a cookie, so
no other site's form can use it) and sent as ``Authorization: Bearer`` on every call.

Everything else the page calls is the order service's own API.
These helper routes are the page's, not the API's: they are left out of the OpenAPI schema.
"""

from __future__ import annotations

import itertools
from typing import Annotated

import httpx
from fastapi import APIRouter, Query, Request, Response

from orderstack.orders.page_assets import PAGE_CSS, PAGE_HTML, PAGE_JS
from orderstack.web.errors import ServiceError
from orderstack.web.inputs import Digits, ExactJsonRoute

# What the page may load and call: its own origin only, no inline script or style.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# A person waits at most this long for the product service behind a relayed call.
_RELAY_TIMEOUT = httpx.Timeout(5.0, connect=1.0)


class ProductRelay:
    """Relays the page's product calls to the product service (its replicas in turn; a
    replica that refuses the connection hands the call to the next, which is safe even for
    a POST: nothing reached the first)."""

    def __init__(
        self, base_urls: list[str], *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._urls = base_urls
        self._next = itertools.cycle(range(len(base_urls)))
        self._client = httpx.AsyncClient(timeout=_RELAY_TIMEOUT, transport=transport)

    async def send(
        self,
        method: str,
        params: dict[str, int],
        body: bytes | None,
        content_type: str | None = None,
        authorization: str | None = None,
    ) -> Response:
        """``content_type``: the page's own, passed on as it came (none: none), so that
        the product service refuses what it would refuse from anyone: a relay that
        called every body JSON would let any site create products with a plain form
        post, which needs no CORS preflight."""
        headers = {"Content-Type": content_type} if content_type is not None else {}
        if authorization is not None:  # the person's own token: the product service checks it
            headers["Authorization"] = authorization
        error = "no product service configured"
        for _ in self._urls:
            url = f"{self._urls[next(self._next)]}/products"
            try:
                answer = await self._client.request(
                    method, url, params=params, content=body, headers=headers
                )
            except httpx.ConnectError as exc:
                error = repr(exc)
                continue
            except httpx.HTTPError as exc:
                error = repr(exc)
                break  # the request may have reached it: do not send it twice
            return Response(
                answer.content,
                status_code=answer.status_code,
                media_type=answer.headers.get("content-type", "application/json"),
            )
        raise ServiceError(
            503, "PRODUCT_SERVICE_UNAVAILABLE", f"product service unavailable: {error}"
        )

    async def close(self) -> None:
        await self._client.aclose()


def page_router(relay: ProductRelay) -> APIRouter:
    router = APIRouter(include_in_schema=False, route_class=ExactJsonRoute)

    @router.get("/")
    async def page() -> Response:
        return Response(PAGE_HTML, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)

    @router.get("/ui/page.css")
    async def page_css() -> Response:
        return Response(PAGE_CSS, media_type="text/css; charset=utf-8", headers=_PAGE_HEADERS)

    @router.get("/ui/page.js")
    async def page_js() -> Response:
        return Response(PAGE_JS, media_type="text/javascript; charset=utf-8", headers=_PAGE_HEADERS)

    @router.get("/ui/products")
    async def list_products(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=100), Digits] = 100,
        offset: Annotated[int, Query(ge=0, le=1_000_000_000), Digits] = 0,
    ) -> Response:
        return await relay.send(
            "GET",
            {"limit": limit, "offset": offset},
            None,
            authorization=request.headers.get("authorization"),
        )

    @router.post("/ui/products")
    async def create_product(request: Request) -> Response:
        return await relay.send(
            "POST",
            {},
            await request.body(),
            request.headers.get("content-type"),
            authorization=request.headers.get("authorization"),
        )

    return router
