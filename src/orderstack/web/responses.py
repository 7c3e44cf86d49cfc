"""The JSON response class both services use (orjson: fast, and no FastAPI re-validation)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class JsonResponse(JSONResponse):
    """A JSONResponse (so OpenAPI documents the route's model) rendered by orjson."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
