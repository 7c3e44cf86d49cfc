"""RABBITMQ_URL names one broker or the nodes of a cluster, comma-separated."""

from __future__ import annotations

import pytest

from orderstack.config import ConfigError, load_settings
from orderstack.messaging.rabbitmq import amqp_urls


def test_several_broker_urls_are_accepted_and_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "RABBITMQ_URL", "amqp://u:p@rmq1:5672/v, amqp://u:p@rmq2:5672/v,amqps://u:p@rmq3/v"
    )
    value = load_settings().amqp_url
    assert value is not None
    assert amqp_urls(value) == [
        "amqp://u:p@rmq1:5672/v",
        "amqp://u:p@rmq2:5672/v",
        "amqps://u:p@rmq3/v",
    ]


@pytest.mark.parametrize("value", ["amqp://rmq1,rmq2:5672", "amqp://rmq1,http://rmq2", ","])
def test_each_broker_url_must_be_amqp(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("RABBITMQ_URL", value)
    with pytest.raises(ConfigError, match="RABBITMQ_URL"):
        load_settings()
