"""The one place that maps errors to HTTP responses, in each service's wire shape.

The order service answers ``{"error", "code", "timestamp"}`` (the seed's Go service); the
product service answers ``{"statusCode", "message", "error"}`` (the seed's NestJS service).
Invalid input is always 400, never FastAPI's 422.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any, Literal

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from orderstack import wire
from orderstack.storage.errors import CommitOutcomeUnknown, is_transient
from orderstack.storage.types import utcnow
from orderstack.web.responses import JsonResponse

log = structlog.get_logger(__name__)

ErrorStyle = Literal["seed", "nest"]


class ServiceError(Exception):
    """A failure the client should see: HTTP status, machine code, human message(s)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str | list[str],
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message if isinstance(message, str) else "; ".join(message))
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}  # sent with the answer (WWW-Authenticate, say)


def error_body(
    style: ErrorStyle, status: int, code: str, message: str | list[str], *, coded: bool = False
) -> dict[str, Any]:
    """The error body in ``style``. ``coded``: the machine code in the NestJS body too, for
    answers a client must tell apart (shedding from an outage, a refusal by stock state)."""
    if style == "nest":
        body: dict[str, Any] = {
            "statusCode": status,
            "message": message,
            "error": HTTPStatus(status).phrase,
        }
        return body | {"code": code} if coded else body
    text = message if isinstance(message, str) else "; ".join(message)
    return {"error": text, "code": code, "timestamp": wire.timestamp(utcnow())}


def error_response(
    style: ErrorStyle, status: int, code: str, message: str | list[str]
) -> JsonResponse:
    return JsonResponse(error_body(style, status, code, message), status_code=status)


def _describe(errors: Sequence[Any]) -> tuple[str, list[str]]:
    """(code, one message per problem) from pydantic's validation errors."""
    code = "VALIDATION_ERROR"
    messages: list[str] = []
    for err in errors:
        if err.get("type") == "json_invalid":
            code = "INVALID_JSON"
            messages.append("request body is not valid JSON")
            continue
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join(loc) or "body"
        if err.get("type") == "missing":
            messages.append(f"{field} is required")
        else:
            messages.append(f"{field}: {err.get('msg', 'invalid value')}")
    return code, messages or ["invalid request"]


def database_unavailable(style: ErrorStyle, path: str, exc: BaseException) -> JsonResponse | None:
    """The answer to a request cut by a transient database failure (stalled or gone: pool
    exhausted, connection lost, a lock or statement bound passed): 503
    ``DATABASE_UNAVAILABLE`` with ``Retry-After: 1``, logged as a warning; a connection lost
    during COMMIT is 503 ``COMMIT_OUTCOME_UNKNOWN``. None for any other exception."""
    if not is_transient(exc):
        return None
    log.warning("database unavailable", path=path, error=repr(exc))
    if isinstance(exc, CommitOutcomeUnknown):
        # Say it: the client must not take this 503 for "nothing happened".
        code = "COMMIT_OUTCOME_UNKNOWN"
        message = (
            "the database connection broke during COMMIT: the change may or may not have"
            " taken effect; retry with the same Idempotency-Key"
        )
        response = JsonResponse(error_body(style, 503, code, message, coded=True), status_code=503)
    else:
        response = error_response(
            style, 503, "DATABASE_UNAVAILABLE", "database unavailable; retry later"
        )
    response.headers["Retry-After"] = "1"
    return response


def service_error_response(style: ErrorStyle, exc: ServiceError) -> JsonResponse:
    """The answer to a ServiceError: its status, its body in ``style``, its headers."""
    response = error_response(style, exc.status, exc.code, exc.message)
    response.headers.update(exc.headers)
    return response


def handled_error(style: ErrorStyle, path: str, exc: BaseException) -> JsonResponse | None:
    """What the app's handlers answer inside the app for ``exc`` raised by an endpoint's
    handler: a ServiceError's answer, or a transient database failure's 503
    (``database_unavailable``); None for anything else, which goes up. The fast paths
    (web/hot.py) answer their handlers' exceptions with it, as the routes' are answered."""
    if isinstance(exc, ServiceError):
        return service_error_response(style, exc)
    return database_unavailable(style, path, exc)


def install_error_handlers(app: FastAPI, style: ErrorStyle) -> None:
    async def on_service_error(_: Request, exc: Exception) -> JsonResponse:
        assert isinstance(exc, ServiceError)
        return service_error_response(style, exc)

    async def on_validation(_: Request, exc: Exception) -> JsonResponse:
        assert isinstance(exc, RequestValidationError)
        code, messages = _describe(exc.errors())
        return error_response(
            style, 400, code, messages if style == "nest" else "; ".join(messages)
        )

    async def on_http(_: Request, exc: Exception) -> JsonResponse:
        assert isinstance(exc, StarletteHTTPException)
        phrase = HTTPStatus(exc.status_code).phrase
        code = phrase.upper().replace(" ", "_").replace("-", "_")
        detail = exc.detail if isinstance(exc.detail, str) else phrase
        response = error_response(
            style, exc.status_code, code, detail.lower() if style == "seed" else detail
        )
        response.headers.update(exc.headers or {})  # a 405's Allow
        return response

    async def on_unexpected(request: Request, exc: Exception) -> JsonResponse:
        unavailable = database_unavailable(style, request.url.path, exc)
        if unavailable is not None:
            return unavailable
        log.exception("unhandled error", path=request.url.path, method=request.method)
        return error_response(style, 500, "INTERNAL_ERROR", "internal server error")

    # The database's errors get a handler of their own class: Starlette runs those inside
    # the app and the connection stays open, while the handler of Exception runs at the
    # outermost layer, which re-raises after answering: the server then logs a traceback
    # and closes the client's connection, for what is only a database blip.
    handlers: dict[type[Exception], Callable[[Request, Exception], Any]] = {
        ServiceError: on_service_error,
        RequestValidationError: on_validation,
        StarletteHTTPException: on_http,
        SQLAlchemyError: on_unexpected,
        CommitOutcomeUnknown: on_unexpected,
        Exception: on_unexpected,
    }
    for exc_type, handler in handlers.items():
        app.add_exception_handler(exc_type, handler)
