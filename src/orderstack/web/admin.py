"""The admin guard: ``Authorization: Bearer <ADMIN_TOKEN>``, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi import Request

from orderstack.web.errors import ServiceError


def admin_guard(token: str | None) -> Callable[[Request], None]:
    """A FastAPI dependency: 403 whenever no token is configured (admin routes are then
    closed); otherwise 401 without credentials and 403 with wrong ones."""
    expected = token.encode() if token else None

    def require_admin(request: Request) -> None:
        if expected is None:
            raise ServiceError(403, "FORBIDDEN", "admin routes are disabled: no ADMIN_TOKEN set")
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ServiceError(401, "UNAUTHORIZED", "admin token required (Authorization: Bearer)")
        if not hmac.compare_digest(given.strip().encode(), expected):
            raise ServiceError(403, "FORBIDDEN", "invalid admin token")

    return require_admin
