"""``/docs`` (Swagger UI) and ``/redoc`` from the service itself (DOCS_ENABLED).

Why: FastAPI's own pages load Swagger UI's and ReDoc's scripts from a CDN, at a floating
major version and without an integrity hash, on the page where an operator pastes an admin
token: whoever serves that script reads the token. Here the scripts and styles are files of
a pinned package (``fastapi-offline==1.7.7``, of which only the files are used: Swagger UI
5.32.6, Apache-2.0; ReDoc 2.5.3, MIT), served under ``/docs/assets/``, and each page's
Content-Security-Policy lets it load nothing from anywhere else (Swagger UI's online
validator badge is off too) nor be framed. ``/openapi.json`` is served either way.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib.resources import files

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, swagger_ui_default_parameters
from starlette.routing import BaseRoute, Route

ASSETS_PATH = "/docs/assets"
# The files served, by name, with their content type.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)
# What both pages may load: their own service's files and /openapi.json. Styles inline:
# both UIs set style attributes (ReDoc writes <style> elements); images as data: URLs;
# ReDoc's search runs in a worker made from a blob.
_POLICY = (
    "default-src 'none'; script-src 'self'{scripts}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def install_docs(app: FastAPI, *, enabled: bool) -> None:
    """Replace FastAPI's CDN-loading ``/docs``, ``/docs/oauth2-redirect`` and ``/redoc``
    with pages on this service's own files; with ``enabled`` false, none of them (404)."""
    urls = (app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url)
    defaults = {url for url in urls if url is not None}
    app.router.routes[:] = [r for r in app.router.routes if not _is_route_at(r, defaults)]
    app.docs_url = app.redoc_url = app.swagger_ui_oauth2_redirect_url = None
    if not enabled:
        return

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> Response:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            swagger_ui_parameters={**swagger_ui_default_parameters, "validatorUrl": None},
        )
        return _with_policy(page)

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> Response:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )
        return _with_policy(page)

    @app.get(ASSETS_PATH + "/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        if name not in ASSETS:
            raise HTTPException(404, "Not Found")
        return Response(
            _asset(name),
            media_type=ASSETS[name],
            headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
        )


@cache
def _asset(name: str) -> bytes:
    """One file of the pinned package, read once per process (both services share it)."""
    return (files("fastapi_offline") / "static" / name).read_bytes()


def _with_policy(page: Response) -> Response:
    """``page`` with its Content-Security-Policy: its inline scripts allowed by their
    hashes, nothing else that is not this service's."""
    hashes = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(bytes(page.body))
    )
    page.headers["Content-Security-Policy"] = _POLICY.format(scripts=hashes)
    page.headers["X-Content-Type-Options"] = "nosniff"
    page.headers["Referrer-Policy"] = "no-referrer"
    return page


def _is_route_at(route: BaseRoute, paths: set[str]) -> bool:
    return isinstance(route, Route) and route.path in paths


__all__ = ["ASSETS", "ASSETS_PATH", "install_docs"]
