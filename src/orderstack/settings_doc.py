"""docs/configuration.md, rendered from the settings themselves.

``Settings`` (config.py) is the one place a setting is written: its name, type, bounds,
default and description (``Field(description=...)``), under a ``# -- Group --`` heading
comment. This module turns those fields into the configuration tables, one section per
heading, so that the code and the documentation say the same thing:

    python -m orderstack.settings_doc                 # the document, on stdout
    python -m orderstack.settings_doc docs/configuration.md   # written (`make docs`)

tests/unit/test_docs.py fails when the committed docs/configuration.md differs from it.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from orderstack.config import Settings

# Variables docker-compose.yml reads that are not settings of the services (the servers'
# own; `.env.example` gives their local-development values). Documented here, with the
# settings, so that every variable of .env.example and of the compose file is described once.
COMPOSE_VARIABLES: dict[str, str] = {
    "MYSQL_PASSWORD": "password of MariaDB's application user `orderuser` (the `mysql` "
    "service); the services get it as `DB_PASSWORD`",
    "MYSQL_ROOT_PASSWORD": "password of MariaDB's `root` (the `mysql` service)",
    "RABBITMQ_ADMIN_USER": "RabbitMQ's operator user (`administrator`, `impersonator`): the "
    "management UI's login (:15672), `orderstack dlq list`, `migrate-queues`; the services "
    "never use it (deploy/rabbitmq/definitions.json, docs/security.md)",
    "RABBITMQ_ADMIN_PASSWORD": "that user's password; URL-safe characters only "
    "(A-Z a-z 0-9 . _ ~ -)",
    "ORDER_SERVICE_BROKER_PASSWORD": "password of the order service's own RabbitMQ user "
    "`order-service` (it may publish `order.created` and `order.cancelled` only); it goes "
    "into that service's `RABBITMQ_URL`, so URL-safe characters only",
    "PRODUCT_SERVICE_BROKER_PASSWORD": "password of the product service's own RabbitMQ user "
    "`product-service` (it may publish its answers and `product_created` only); URL-safe "
    "characters only",
    "REDIS_PASSWORD": "Redis's password (`requirepass`); it goes into the services' "
    "`REDIS_URL`, so URL-safe characters only",
    "GRAFANA_ADMIN_PASSWORD": "password of Grafana's `admin` (the `grafana` service, :3001)",
    # Images: the upstream ones by default; `make compose-test` names stand-ins built from
    # Debian's packages where those cannot be pulled (docs/deploy.md).
    "ORDERSTACK_IMAGE": "the services' image, built from the Dockerfile (default "
    "`orderstack:local`)",
    "PYTHON_IMAGE": "the Dockerfile's base image (build argument; default `python:3.11-slim`)",
    "MARIADB_IMAGE": "the `mysql` service's image (default `mariadb:10.11`)",
    "REDIS_IMAGE": "the `redis` service's image (default `redis:7-alpine`)",
    "RABBITMQ_IMAGE": "the `rabbitmq` service's image (default `rabbitmq:3-management`)",
    "HAPROXY_IMAGE": "the `haproxy` service's image (default `haproxy:2.6`)",
    "PROMETHEUS_IMAGE": "the `prometheus` service's image (default `prom/prometheus:v2.55.1`)",
    "GRAFANA_IMAGE": "the `grafana` service's image (default `grafana/grafana:11.3.0`)",
    "MYSQL_CONTAINER_NAME": "the `mysql` service's container name (default `mysql`, the "
    "seed's `docker exec mysql ...`)",
    "RABBITMQ_CONTAINER_NAME": "the `rabbitmq` service's container name (default `rabbitmq`)",
    # Host ports: the seed's by default; `make compose-test` picks free ones.
    "HTTP_BIND_ADDRESS": "the host address HAProxy's 8080 and 3000 are published on "
    "(default `0.0.0.0`; the other ports are on 127.0.0.1 only)",
    "ORDER_HOST_PORT": "host port of the order service, through HAProxy (default 8080)",
    "PRODUCT_HOST_PORT": "host port of the product service, through HAProxy (default 3000)",
    "MYSQL_HOST_PORT": "host port of MariaDB, on 127.0.0.1 (default 3306)",
    "REDIS_HOST_PORT": "host port of Redis, on 127.0.0.1 (default 6379)",
    "RABBITMQ_HOST_PORT": "host port of RabbitMQ's AMQP, on 127.0.0.1 (default 5672)",
    "RABBITMQ_MANAGEMENT_HOST_PORT": "host port of RabbitMQ's management UI, on 127.0.0.1 "
    "(default 15672)",
    "PROMETHEUS_HOST_PORT": "host port of Prometheus, on 127.0.0.1 (default 9090)",
    "GRAFANA_HOST_PORT": "host port of Grafana, on 127.0.0.1 (default 3001)",
}

_HEADING = re.compile(r"^    # -- (?P<title>.+?) -+\s*$")
_FIELD = re.compile(r"^    (?P<name>[A-Z][A-Z0-9_]*)\s*:")
# A reference to another page of docs/ in a description becomes a link (the document lives
# in docs/ too).
_DOC_REFERENCE = re.compile(r"\bdocs/(?P<page>[A-Za-z0-9_.-]+\.md)\b")

_INTRO = """\
# Configuration

<!-- Generated from src/orderstack/config.py by `make docs` (python -m
orderstack.settings_doc). Do not edit: change the setting's Field(description=...) and
regenerate; tests/unit/test_docs.py fails when this file differs. -->

Every setting is an environment variable, read once by `orderstack.config.Settings`
([`src/orderstack/config.py`](../src/orderstack/config.py)), or a `KEY=value` line of a
`.env` file in the working directory (the environment wins over the file; lines naming no
setting are ignored). An empty value means unset. A value that cannot be parsed stops
start-up with a message naming the variable, exit code 2. Unset database, broker and cache
mean the embedded default. What the settings promise, and the bounds that are not settings:
[CONTRACT.md](CONTRACT.md#configuration).
"""


def _slug(title: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def groups() -> list[tuple[str, list[str]]]:
    """The ``# -- Title --`` sections of Settings, in order, each with its settings' names.

    Raises ValueError when a setting stands before the first heading (it would be in no
    section) or a field was not found in the source."""
    found: list[tuple[str, list[str]]] = []
    for line in inspect.getsource(Settings).splitlines():
        if heading := _HEADING.match(line):
            found.append((heading["title"], []))
        elif (field := _FIELD.match(line)) and field["name"] in Settings.model_fields:
            if not found:
                raise ValueError(f"{field['name']} stands before the first '# -- ... --' heading")
            found[-1][1].append(field["name"])
    named = [name for _, names in found for name in names]
    missing = [name for name in Settings.model_fields if name not in named]
    if missing:
        raise ValueError(f"settings not found under a heading of config.py: {missing}")
    return [(title, names) for title, names in found if names]


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def type_of(field: FieldInfo) -> str:
    """``int (≥ 1, ≤ 65535)``, ``one of `json`, `console```, ``str``..."""
    annotation: Any = field.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(f"`{choice}`" for choice in typing.get_args(annotation))
    name = getattr(annotation, "__name__", str(annotation))
    bounds = []
    for item in field.metadata:
        for kind, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if isinstance(item, getattr(annotated_types, kind.capitalize())):
                bounds.append((kind in ("le", "lt"), f"{sign} {_number(getattr(item, kind))}"))
    if bounds:
        return f"{name} ({', '.join(text for _, text in sorted(bounds, key=lambda b: b[0]))})"
    return str(name)


def default_of(field: FieldInfo) -> str:
    """How the table writes a default: unset, empty, `true`, `5.0`..."""
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, SecretStr):  # a secret's default is never written out
        value = "" if not value.get_secret_value() else "(set)"
    if value == "":
        return "empty"
    return f"`{value}`"


def _cell(text: str) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return _DOC_REFERENCE.sub(lambda m: f"[{m[0]}]({m['page']})", text)


def render() -> str:
    """The whole of docs/configuration.md."""
    sections = groups()
    compose_title = "Variables of docker-compose.yml only"
    contents = " · ".join(
        f"[{title}](#{_slug(title)})" for title in [t for t, _ in sections] + [compose_title]
    )
    out = [_INTRO, f"Contents: {contents}\n"]
    for title, names in sections:
        out.append(f"## {title}\n")
        out.append("| setting | type | default | meaning |\n| --- | --- | --- | --- |")
        for name in names:
            field = Settings.model_fields[name]
            description = _cell(field.description or "")
            out.append(f"| `{name}` | {type_of(field)} | {default_of(field)} | {description} |")
        out.append("")
    out.append(f"## {compose_title}\n")
    out.append(
        "[`docker-compose.yml`](../docker-compose.yml) reads these for its servers (MariaDB, "
        "RabbitMQ, Redis) and builds the services' `DB_PASSWORD`, `RABBITMQ_URL` and "
        "`REDIS_URL` from them; it "
        "refuses to start without them. The services themselves do not read them. "
        "[`.env.example`](../.env.example) has their local-development values.\n"
    )
    out.append("| variable | meaning |\n| --- | --- |")
    out.extend(f"| `{name}` | {_cell(text)} |" for name, text in COMPOSE_VARIABLES.items())
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render()
    if args:
        Path(args[0]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
