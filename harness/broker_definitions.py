"""The broker's definitions for docker compose (deploy/rabbitmq/definitions.json), made from
the code that they must agree with: the topology the services declare
(messaging/topology.py) and each service's permissions (messaging/trust.py
``broker_permissions``). ``python -m harness.broker_definitions`` prints them;
tests/unit/test_compose.py fails when the committed file differs.

The passwords are placeholders (``__NAME__``), filled in from the environment by
deploy/rabbitmq/entrypoint.sh when the container starts: no password is in the repository.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orderstack.events import Service
from orderstack.messaging.topology import (
    ALL_QUEUES,
    DEAD_LETTER_EXCHANGE,
    EXCHANGE,
    dead_letter_queue_arguments,
    queue_arguments,
)
from orderstack.messaging.trust import broker_permissions

DEFINITIONS_PATH = Path(__file__).resolve().parents[1] / "deploy" / "rabbitmq" / "definitions.json"
VHOST = "/"
# Each service's broker user, as compose names them (ORDER_SERVICE_BROKER_USER...).
SERVICE_USERS = {Service.ORDERS: "order-service", Service.PRODUCTS: "product-service"}
# The environment variable each placeholder is filled from (deploy/rabbitmq/entrypoint.sh).
ADMIN_USER = "RABBITMQ_ADMIN_USER"
PLACEHOLDERS = (
    ADMIN_USER,
    "RABBITMQ_ADMIN_PASSWORD",
    "ORDER_SERVICE_BROKER_PASSWORD",
    "PRODUCT_SERVICE_BROKER_PASSWORD",
)
_PASSWORDS = {
    Service.ORDERS: "ORDER_SERVICE_BROKER_PASSWORD",
    Service.PRODUCTS: "PRODUCT_SERVICE_BROKER_PASSWORD",
}


def placeholder(name: str) -> str:
    return f"__{name}__"


def definitions() -> dict[str, Any]:
    """Users (the operator's, one per service), their permissions and topic permissions,
    and the topology with quorum queues (QUEUE_TYPE's default)."""
    admin = placeholder(ADMIN_USER)
    users = [
        # The operator: the management UI, `orderstack dlq` and `migrate-queues` (whose
        # copies keep each message's user_id: `impersonator` lets the broker accept them).
        {
            "name": admin,
            "password": placeholder("RABBITMQ_ADMIN_PASSWORD"),
            "tags": "administrator,impersonator",
        },
        *(
            {"name": SERVICE_USERS[s], "password": placeholder(_PASSWORDS[s]), "tags": ""}
            for s in Service
        ),
    ]
    permissions = [
        {"user": admin, "vhost": VHOST, "configure": ".*", "write": ".*", "read": ".*"},
    ]
    topic_permissions = []
    for service in Service:
        allowed = broker_permissions(service)
        permissions.append(
            {
                "user": SERVICE_USERS[service],
                "vhost": VHOST,
                "configure": allowed.configure,
                "write": allowed.write,
                "read": allowed.read,
            }
        )
        topic_permissions.append(
            {
                "user": SERVICE_USERS[service],
                "vhost": VHOST,
                "exchange": EXCHANGE,
                "write": allowed.topic_write,
                "read": allowed.topic_read,
            }
        )
    exchanges = [
        _exchange(EXCHANGE, "topic"),
        _exchange(DEAD_LETTER_EXCHANGE, "direct"),
    ]
    queues, bindings = [], []
    for spec in ALL_QUEUES:
        queues.append(_queue(spec.name, queue_arguments(spec, "quorum")))
        queues.append(_queue(spec.dead_letter_queue, dead_letter_queue_arguments("quorum")))
        bindings += [_binding(EXCHANGE, spec.name, key) for key in spec.routing_keys]
        bindings.append(
            _binding(DEAD_LETTER_EXCHANGE, spec.dead_letter_queue, spec.dead_letter_queue)
        )
    return {
        "users": users,
        "vhosts": [{"name": VHOST}],
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
    }


def _exchange(name: str, kind: str) -> dict[str, Any]:
    return {
        "name": name,
        "vhost": VHOST,
        "type": kind,
        "durable": True,
        "auto_delete": False,
        "internal": False,
        "arguments": {},
    }


def _queue(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "vhost": VHOST,
        "durable": True,
        "auto_delete": False,
        "arguments": arguments,
    }


def _binding(source: str, queue: str, key: str) -> dict[str, Any]:
    return {
        "source": source,
        "vhost": VHOST,
        "destination": queue,
        "destination_type": "queue",
        "routing_key": key,
        "arguments": {},
    }


def render() -> str:
    """The file's text, as committed."""
    return json.dumps(definitions(), indent=2) + "\n"


if __name__ == "__main__":
    print(render(), end="")
