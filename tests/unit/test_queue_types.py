"""Quorum queues by default, classic on request: the declare arguments every service and
`orderstack migrate-queues` use, and the setting that picks them."""

from __future__ import annotations

import pytest

from orderstack.config import ConfigError, load_settings
from orderstack.messaging.queue_migration import targets
from orderstack.messaging.topology import (
    ALL_QUEUES,
    DEAD_LETTER_EXCHANGE,
    DELIVERY_LIMIT,
    EXCHANGE,
    PRODUCT_SERVICE_QUEUE,
    dead_letter_queue_arguments,
    queue_arguments,
)


def test_queues_are_quorum_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUEUE_TYPE", raising=False)
    assert load_settings().QUEUE_TYPE == "quorum"
    monkeypatch.setenv("QUEUE_TYPE", "classic")
    assert load_settings().QUEUE_TYPE == "classic"
    monkeypatch.setenv("QUEUE_TYPE", "stream")
    with pytest.raises(ConfigError, match="QUEUE_TYPE"):
        load_settings()


def test_a_quorum_work_queue_dead_letters_at_least_once_past_a_high_delivery_limit() -> None:
    assert queue_arguments(PRODUCT_SERVICE_QUEUE, "quorum") == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": "product-service.events.dlq",
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    # A last resort against crash loops, far above what node losses and restarts cost.
    assert DELIVERY_LIMIT >= 20


def test_a_classic_work_queue_is_declared_as_before() -> None:
    assert queue_arguments(PRODUCT_SERVICE_QUEUE, "classic") == {
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": "product-service.events.dlq",
    }
    assert dead_letter_queue_arguments("classic") == {}
    assert dead_letter_queue_arguments("quorum") == {"x-queue-type": "quorum"}


def test_the_migration_moves_every_queue_dead_letter_queues_first() -> None:
    moved = targets("quorum")
    names = [t.name for t in moved]
    assert names[: len(ALL_QUEUES)] == [spec.dead_letter_queue for spec in ALL_QUEUES]
    assert names[len(ALL_QUEUES) :] == [spec.name for spec in ALL_QUEUES]
    product = moved[names.index(PRODUCT_SERVICE_QUEUE.name)]
    # Every event the product service consumes (events.py), order.expired of holds included.
    assert product.bindings == (
        (EXCHANGE, "order.created"),
        (EXCHANGE, "order.cancelled"),
        (EXCHANGE, "order.expired"),
    )
    assert product.arguments == queue_arguments(PRODUCT_SERVICE_QUEUE, "quorum")
    assert product.temporary == "product-service.events.migrating"
