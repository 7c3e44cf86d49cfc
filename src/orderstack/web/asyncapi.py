"""``/asyncapi.json`` and ``/asyncapi``: a service's AsyncAPI document, and the same as a
plain HTML page (rendered here once, no script, nothing fetched from elsewhere)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from html import escape
from typing import Any

import orjson
from fastapi import FastAPI, Response
from fastapi.responses import HTMLResponse

ASYNCAPI_JSON_PATH = "/asyncapi.json"
ASYNCAPI_PAGE_PATH = "/asyncapi"


def add_asyncapi_routes(app: FastAPI, document: Mapping[str, Any]) -> None:
    """Serve ``document`` (built once, at start-up) as JSON and as a page. Neither is in the
    OpenAPI document, as ``/docs`` and ``/openapi.json`` are not."""
    body = orjson.dumps(document)
    page = render_page(document)

    @app.get(ASYNCAPI_JSON_PATH, include_in_schema=False)
    async def asyncapi_json() -> Response:
        return Response(body, media_type="application/json")

    @app.get(ASYNCAPI_PAGE_PATH, include_in_schema=False)
    async def asyncapi_page() -> HTMLResponse:
        return HTMLResponse(page)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; padding: 0 1rem;
       color: #1f2328; line-height: 1.45; }
table { border-collapse: collapse; width: 100%; margin-bottom: 1.5rem; }
th, td { border: 1px solid #d0d7de; padding: .35rem .6rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; padding: .75rem; overflow-x: auto;
      font-size: .85rem; }
code { background: #f6f8fa; padding: 0 .2rem; }
section { border-top: 1px solid #d0d7de; margin-top: 1.5rem; }
.send { color: #1a7f37; font-weight: bold; } .receive { color: #0969da; font-weight: bold; }
"""


def render_page(document: Mapping[str, Any]) -> str:
    """The document as HTML: servers, channels, operations, then each message with its
    headers and payload schemas, and every schema of ``components/schemas``."""
    info = document.get("info", {})
    components = document.get("components", {})
    title = f"{info.get('title', 'AsyncAPI')} {info.get('version', '')}".strip()
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p>AsyncAPI {escape(str(document.get('asyncapi', '')))}: "
        f'<a href="{ASYNCAPI_JSON_PATH}">{ASYNCAPI_JSON_PATH}</a> · '
        '<a href="/docs">HTTP API (/docs)</a></p>',
        *(f"<p>{_text(p)}</p>" for p in str(info.get("description", "")).split("\n\n") if p),
        '<h2 id="servers">Servers</h2>',
        _table(
            ("server", "host", "protocol", "description"),
            [
                (
                    _code(name),
                    _code(s.get("host", "")),
                    escape(f"{s.get('protocol', '')} {s.get('protocolVersion', '')}"),
                    _text(s.get("description", "")),
                )
                for name, s in document.get("servers", {}).items()
            ],
        ),
        '<h2 id="channels">Channels</h2>',
        _table(
            ("channel", "address", "AMQP", "messages", "description"),
            [
                (
                    f'<span id="channel-{escape(name)}">{_code(name)}</span>',
                    _code(ch.get("address", "")),
                    _amqp(ch.get("bindings", {}).get("amqp", {})),
                    ", ".join(_message_link(m) for m in ch.get("messages", {})),
                    _text(ch.get("description", "")),
                )
                for name, ch in document.get("channels", {}).items()
            ],
        ),
        '<h2 id="operations">Operations</h2>',
        _table(
            ("operation", "action", "channel", "messages", "description"),
            [
                (
                    _code(name),
                    f'<span class="{escape(op.get("action", ""))}">'
                    f"{escape(op.get('action', ''))}</span>",
                    _ref_link(op.get("channel", {}).get("$ref", ""), "channel"),
                    ", ".join(
                        _message_link(_unescape(ref.get("$ref", "").rsplit("/", 1)[-1]))
                        for ref in op.get("messages", [])
                    ),
                    _text(" ".join(x for x in (op.get("summary"), op.get("description")) if x)),
                )
                for name, op in document.get("operations", {}).items()
            ],
        ),
        '<h2 id="messages">Messages</h2>',
    ]
    for name, message in components.get("messages", {}).items():
        parts += [
            f'<section id="message-{escape(name)}"><h3>{_code(name)}</h3>',
            f"<p>{_text(message.get('description') or message.get('summary', ''))}</p>",
            f"<p>Content type {_code(message.get('contentType', ''))}</p>",
            "<h4>Headers</h4>",
            _pre(message.get("headers", {})),
            "<h4>Payload</h4>",
            _pre(message.get("payload", {})),
            "<h4>Correlation id</h4>",
            _pre(message.get("correlationId", {})),
            "</section>",
        ]
    parts.append('<h2 id="schemas">Schemas</h2>')
    for name, schema in components.get("schemas", {}).items():
        parts += [
            f'<section id="schema-{escape(name)}"><h3>{_code(name)}</h3>',
            _pre(schema),
            "</section>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def _table(headings: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headings)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _text(value: object) -> str:
    """Escaped text, with Markdown's `code` spans as <code>."""
    pieces = escape(str(value)).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))


def _code(value: object) -> str:
    return f"<code>{escape(str(value))}</code>"


def _pre(value: object) -> str:
    return f"<pre>{escape(json.dumps(value, indent=2, ensure_ascii=False))}</pre>"


def _unescape(token: str) -> str:
    """A JSON Pointer token as the name it stands for (RFC 6901)."""
    return token.replace("~1", "/").replace("~0", "~")


def _message_link(name: str) -> str:
    return f'<a href="#message-{escape(name)}">{_code(name)}</a>'


def _ref_link(ref: str, kind: str) -> str:
    name = _unescape(ref.rsplit("/", 1)[-1])
    return f'<a href="#{kind}-{escape(name)}">{_code(name)}</a>'


def _amqp(binding: Mapping[str, Any]) -> str:
    if binding.get("is") == "queue":
        return f"queue {_code(binding.get('queue', {}).get('name', ''))}"
    exchange = binding.get("exchange", {})
    kind, name = escape(exchange.get("type", "")), _code(exchange.get("name", ""))
    return f"routing key on {kind} exchange {name}"
