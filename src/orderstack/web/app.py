"""The FastAPI app every service starts from (``assembly.service_app``): error mapping, limits,
``/livez``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from orderstack.config import Settings
from orderstack.serving import set_edge_limits
from orderstack.web.auth import Authenticate, BearerTokens
from orderstack.web.deadline import RequestDeadline
from orderstack.web.errors import ErrorStyle, handled_error, install_error_handlers
from orderstack.web.hot import HotPath, HotPaths
from orderstack.web.limits import (
    AdmissionGate,
    BodySizeLimit,
    InFlightLimit,
    LimitCounts,
    edge_limits,
)
from orderstack.web.metrics import HttpMetrics, HttpStats
from orderstack.web.request_id import RequestId
from orderstack.web.responses import JsonResponse
from orderstack.wire import MAX_ID

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def base_app(
    title: str,
    style: ErrorStyle,
    settings: Settings,
    lifespan: Lifespan,
    *,
    http_stats: HttpStats | None = None,
    limit_counts: LimitCounts | None = None,
    hot_paths: Sequence[HotPath] = (),
    gates: Sequence[AdmissionGate] = (),
    authentication: BearerTokens | None = None,
) -> FastAPI:
    """The app with error mapping, limits and ``/livez``. With ``http_stats`` every request
    that is not shed is counted there (web/metrics.py); shed ones go to ``limit_counts``.
    ``hot_paths`` call their endpoints' handlers before the app's routing when they can
    (web/hot.py); ``gates`` refuse requests at the door beside the adaptive limit
    (web/limits.py). ``authentication`` puts each request's caller in ``scope["user"]``
    before the fast paths and the routes (web/auth.py)."""
    app = FastAPI(
        title=title,
        lifespan=lifespan,
        default_response_class=JsonResponse,
        generate_unique_id_function=operation_id,
        # FastAPI's own OpenTelemetry hooks off: tracing.py instruments the app when traces
        # are on, and the native check ran on every request (several % of a cached GET).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app, style)
    # A 413 is counted in ``limit_counts`` (the body was read first by InFlightLimit).
    limit_counts = limit_counts if limit_counts is not None else LimitCounts()
    app.add_middleware(
        BodySizeLimit, max_bytes=settings.MAX_BODY_BYTES, style=style, counts=limit_counts
    )
    if hot_paths:
        # Inside the metrics: a request the fast path answers is counted as a routed one,
        # by the same middleware; its handler's errors are answered as the routes' are.
        app.add_middleware(
            HotPaths, paths=hot_paths, on_error=lambda path, exc: handled_error(style, path, exc)
        )
    if authentication is not None:
        # Outside the fast paths: they and the routes read the same caller. It never
        # refuses by itself (the routes' guards do), so it needs no error handler.
        app.add_middleware(Authenticate, backend=authentication)
    if http_stats is not None:
        app.add_middleware(HttpMetrics, stats=http_stats)
    # The deadline covers the hot paths and the app, and whatever they wait for.
    app.add_middleware(
        RequestDeadline,
        seconds=settings.REQUEST_TIMEOUT_SECONDS,
        style=style,
        counts=limit_counts,
    )
    # Outside the rest: a shed request costs no parsing, and is counted only in
    # ``limit_counts``. It takes a slot only once its body has arrived (``max_body``): a
    # slow body holds no slot (the server's body deadline bounds it).
    app.add_middleware(
        InFlightLimit,
        max_in_flight=settings.MAX_IN_FLIGHT,
        target=settings.ADMISSION_TARGET_SECONDS,
        style=style,
        counts=limit_counts,
        gates=gates,
        max_body=settings.MAX_BODY_BYTES,
    )
    # Outermost: every answer, a shed one too, carries its X-Request-ID, and every log line
    # of the request its request_id (web/request_id.py); the access log when ACCESS_LOG.
    app.add_middleware(RequestId, access_log=settings.ACCESS_LOG)

    @app.get("/livez", tags=["health"])
    async def livez() -> dict[str, str]:
        """Liveness: the process serves HTTP (no dependency is probed). A constant answer."""
        return {"status": "ok"}

    app.openapi = _as_answered(app)  # type: ignore[method-assign]
    # What its server refuses before any of this runs (serving.py): heads too large or
    # slow, bodies too slow, connections past the cap, in the app's error style.
    set_edge_limits(app, edge_limits(settings, style, limit_counts))
    return app


def operation_id(route: APIRoute) -> str:
    """A route's OpenAPI operation id, as a generated client names its function: the tag,
    then the handler's name without the resource's noun (``orders-create``,
    ``orders-for-product``, ``products-adjust-stock``); an untagged or a probe route keeps
    its name (``health``). FastAPI's default (``create_order_orders_post``) repeats the path."""
    tag = str(route.tags[0]) if route.tags else ""
    nouns = {tag, tag.removesuffix("s")}
    words = [w for w in route.name.split("_") if w not in nouns]
    if not tag or not words or tag == "health":
        return route.name.replace("_", "-")
    return "-".join([tag, *words])


def _as_answered(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The app's OpenAPI document without FastAPI's default 422 "Validation Error": invalid
    input is answered 400 (each route lists it, with its shape); 422 stays only where a
    route declares it itself (``IDEMPOTENCY_KEY_REUSED``)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = generate()
        default = "#/components/schemas/HTTPValidationError"
        for operations in doc.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                schema = responses.get("422", {}).get("content", {}).get("application/json", {})
                if schema.get("schema", {}).get("$ref") == default:
                    del responses["422"]
        if default not in str(doc.get("paths")):
            schemas = doc.get("components", {}).get("schemas", {})
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
        _integer_bounds(doc)
        app.openapi_schema = doc
        return doc

    return openapi


def _integer_bounds(node: Any) -> None:
    """Integer bounds written as integers: FastAPI's document model holds every bound as a
    float, and 2^63 - 1 as a float reads back as 2^63, an id the API refuses."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for key in ("minimum", "maximum"):
                bound = node.get(key)
                if isinstance(bound, float) and bound.is_integer():
                    node[key] = min(int(bound), MAX_ID)
        for value in node.values():
            _integer_bounds(value)
    elif isinstance(node, list):
        for value in node:
            _integer_bounds(value)


__all__ = ["base_app", "operation_id"]
