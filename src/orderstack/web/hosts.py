"""The ``Host`` check (ALLOWED_HOSTS): a request naming another host is 400 before anything
else runs.

Why: a page on any site can make a browser on this machine send requests to
``127.0.0.1:8080`` under the page's own name (DNS rebinding: ``evil.example`` first resolves
to the attacker, then to 127.0.0.1), and read the answers, since to the browser they come
from ``evil.example`` itself. The only thing that gives such a request away is its ``Host``
header, which the browser fills in with the page's name and a script cannot change. So
``orderstack dev``, which a developer runs on the machine with their browser, answers only
requests addressed to this machine's own names (config.LOCAL_HOSTS). Starlette's
TrustedHostMiddleware cuts the port at the first colon, which breaks ``[::1]:8080``; this
one reads the header the way RFC 9110 writes it.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from orderstack.web.errors import ErrorStyle, error_body
from orderstack.web.limits import send_json


class HostCheck:
    """Answers 400 ``HOST_NOT_ALLOWED`` when the ``Host`` header (missing, or its name
    without the port) matches none of ``patterns``: a name or address (IPv6 in brackets),
    ``*.name`` for the subdomains of ``name``."""

    def __init__(self, app: ASGIApp, *, patterns: Sequence[str], style: ErrorStyle) -> None:
        self.app, self.style = app, style
        self.names = frozenset(p for p in patterns if not p.startswith("*."))
        self.suffixes = tuple(p[1:] for p in patterns if p.startswith("*."))  # ".name"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allows(_host(scope)):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        message = "the Host header names a host this service does not answer for (ALLOWED_HOSTS)"
        await send_json(send, 400, error_body(self.style, 400, "HOST_NOT_ALLOWED", message))

    def allows(self, host: str | None) -> bool:
        if host is None:
            return False
        return host in self.names or host.endswith(self.suffixes)


def _host(scope: Scope) -> str | None:
    """The host name of the request's ``Host`` header, lower case, without its port or a
    final dot; None when there is none, or more than one."""
    values = [v for k, v in scope.get("headers", ()) if k == b"host"]
    if len(values) != 1:
        return None
    try:
        value = values[0].decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if value.startswith("["):  # [v6] or [v6]:port
        end = value.find("]")
        rest = value[end + 1 :]
        if end < 0 or rest and not _is_port(rest):
            return None
        return value[: end + 1]
    name, colon, port = value.partition(":")
    if colon and not _is_port(colon + port):
        return None
    return name.removesuffix(".") or None


def _is_port(text: str) -> bool:
    """``:digits``, the port part of a Host header (empty digits too: RFC 3986 allows it)."""
    digits = text[1:]
    return text.startswith(":") and (not digits or digits.isascii() and digits.isdigit())
