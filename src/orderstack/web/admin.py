"""The admin guard: ``Authorization: Bearer <ADMIN_TOKEN>``, compared in constant time.

It is declared to OpenAPI as an HTTP bearer security scheme (``AdminToken``), so the
routes it guards carry it in ``/openapi.json`` and ``/docs`` shows an Authorize button.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from orderstack.web.errors import ServiceError

SECURITY_SCHEME = "AdminToken"

# auto_error=False: the guard answers itself, in the service's error shape (401 or 403).
_bearer = HTTPBearer(
    scheme_name=SECURITY_SCHEME,
    description="The ADMIN_TOKEN the service was started with.",
    auto_error=False,
)

Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def admin_guard(token: str | None) -> Callable[[HTTPAuthorizationCredentials | None], None]:
    """A FastAPI dependency: 403 whenever no token is configured (admin routes are then
    closed); otherwise 401 without credentials and 403 with wrong ones."""
    expected = token.encode() if token else None

    def require_admin(credentials: Credentials) -> None:
        if expected is None:
            raise ServiceError(403, "FORBIDDEN", "admin routes are disabled: no ADMIN_TOKEN set")
        given = credentials.credentials.strip() if credentials is not None else ""
        if not given:
            raise ServiceError(
                401,
                "UNAUTHORIZED",
                "admin token required (Authorization: Bearer)",
                {"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(given.encode(), expected):
            raise ServiceError(403, "FORBIDDEN", "invalid admin token")

    return require_admin
