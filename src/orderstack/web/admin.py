"""The admin guard: ``Authorization: Bearer <ADMIN_TOKEN>``, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi import Request

from orderstack.web.errors import ServiceError


def admin_guard(token: str | None) -> Callable[[Request], None]:
    """A FastAPI dependency: 401 without credentials, 403 with wrong ones or when no token
    is configured (admin routes are then closed)."""
    expected = token.encode() if token else None

    def require_admin(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ServiceError(401, "UNAUTHORIZED", "admin token required (Authorization: Bearer)")
        if expected is None:
            raise ServiceError(403, "FORBIDDEN", "admin routes are disabled: no ADMIN_TOKEN set")
        if not hmac.compare_digest(given.strip().encode(), expected):
            raise ServiceError(403, "FORBIDDEN", "invalid admin token")

    return require_admin
