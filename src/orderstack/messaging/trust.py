"""Who may publish which event, and how a consumer knows who did: each service's broker user.

An event is believed for who sent it, not for what it says. The broker vouches for the
sender: every message our bus publishes carries the AMQP ``user_id`` of its connection, and
RabbitMQ refuses one whose ``user_id`` is not the user the connection logged in as
(PRECONDITION_FAILED), so a ``user_id`` that arrives is the publisher's own. A consumer
believes an event only when that user is the broker user of the service orderstack/events.py
declares as the event's publisher (``PublisherTrust.refusal``); any other, or none, is
dead-lettered with the reason ``untrusted_publisher`` and changes nothing (the consumer's
usual dead-lettering, messaging/consumer.py). Someone who can write to the exchange but is
not the order service cannot take stock with an ``order.created``; the product service's
answers are believed from the product service only.

The broker's topic permissions say the same from the other side: each service's user may
publish only the routing keys of its own events (``topic_write_pattern``; deploy/rabbitmq/
and docs/security.md). Each service's user comes from the settings (``from_settings``); by
default both are the user of this process's RABBITMQ_URL, so that one shared user (a
developer's broker, the test sandboxes) keeps working.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from orderstack.config import Settings
from orderstack.events import BY_NAME, Service, consumed_by, published_by
from orderstack.messaging.topology import ALL_QUEUES, DEAD_LETTER_EXCHANGE, EXCHANGE, QUEUES

UNTRUSTED_PUBLISHER = "untrusted_publisher"  # the dead-letter reason's first word


@dataclass(frozen=True, slots=True)
class PublisherTrust:
    """Each service's broker user; ``require_user_id`` False believes an event that
    carries no ``user_id`` at all (the seed's publishers set none), never one that names
    another user."""

    users: Mapping[Service, str]
    require_user_id: bool = True

    def __post_init__(self) -> None:
        missing = set(Service) - set(self.users)
        if missing:
            raise ValueError(f"no broker user for the {', '.join(sorted(missing))}")

    @classmethod
    def shared(cls, user: str, *, require_user_id: bool = True) -> PublisherTrust:
        """Both services publish as ``user`` (one broker user for both)."""
        return cls({service: user for service in Service}, require_user_id)

    @classmethod
    def from_settings(cls, settings: Settings) -> PublisherTrust:
        """ORDER_SERVICE_BROKER_USER and PRODUCT_SERVICE_BROKER_USER, each defaulting to the
        user of RABBITMQ_URL; BROKER_USER_ID_CHECK."""
        default = settings.broker_user or "guest"
        return cls(
            {
                Service.ORDERS: settings.ORDER_SERVICE_BROKER_USER or default,
                Service.PRODUCTS: settings.PRODUCT_SERVICE_BROKER_USER or default,
            },
            require_user_id=settings.BROKER_USER_ID_CHECK == "required",
        )

    def services_of(self, user: str) -> frozenset[Service]:
        """The services that publish as ``user`` (both with a shared user, none for an
        operator's user)."""
        return frozenset(service for service, name in self.users.items() if name == user)

    def refusal(self, event_name: str, user_id: str | None) -> str | None:
        """Why an ``event_name`` published by broker user ``user_id`` (None: the message
        carries none) is not to be believed, or None when it is. A name no declaration has
        is left to the handler (it refuses it as unexpected)."""
        declared = BY_NAME.get(event_name)
        if declared is None:
            return None
        expected = self.users[declared.publisher]
        if not user_id:
            if not self.require_user_id:
                return None
            return (
                f"{UNTRUSTED_PUBLISHER}: {event_name} carries no user_id (only the "
                f"{declared.publisher}'s broker user {expected!r} may publish it)"
            )
        if user_id != expected:
            return (
                f"{UNTRUSTED_PUBLISHER}: {event_name} published by broker user {user_id!r}; "
                f"only the {declared.publisher}'s ({expected!r}) may publish it"
            )
        return None


@dataclass(frozen=True, slots=True)
class BrokerPermissions:
    """What ``service``'s broker user may do in the vhost (RabbitMQ's regular expressions):
    ``configure``, ``write`` and ``read`` on resource names, and on the events exchange the
    routing keys it may publish (``topic_write``) and bind its queue with (``topic_read``)."""

    configure: str
    write: str
    read: str
    topic_write: str
    topic_read: str


def broker_permissions(service: Service) -> BrokerPermissions:
    """Its own queue and dead-letter queue, declared and bound by it (configure, write on
    the queue; read on the exchanges it binds to), consumed by it (read); both exchanges,
    published to (write: events on one, dead-letter copies on the other). It also reads the
    dead-letter queues of the queues its events go to: ``orderstack dlq replay`` runs as
    the publisher's user (a replay is believed only from it). On the events exchange it
    publishes its own events' routing keys only."""
    own = QUEUES[service]
    exchanges = [EXCHANGE, DEAD_LETTER_EXCHANGE]
    mine = [*exchanges, own.name, own.dead_letter_queue]
    published = {event.name for event in published_by(service)}
    its_letters = [q.dead_letter_queue for q in ALL_QUEUES if published & set(q.routing_keys)]
    return BrokerPermissions(
        configure=_exactly(mine),
        write=_exactly(mine),
        read=_exactly([*mine, *(q for q in its_letters if q not in mine)]),
        topic_write=topic_write_pattern(service),
        topic_read=topic_read_pattern(service),
    )


def topic_write_pattern(service: Service) -> str:
    """The broker's topic permission of ``service``'s user on the events exchange: the
    routing keys of the events it publishes, and nothing else."""
    return _exactly(event.name for event in published_by(service))


def topic_read_pattern(service: Service) -> str:
    """The routing keys ``service``'s queue may be bound with: the events it consumes."""
    return _exactly(event.name for event in consumed_by(service))


def _exactly(names: Iterable[str]) -> str:
    """A pattern that matches exactly these names (their dots, and any other special
    character, escaped; ``-`` left as it is, readable in the broker's definitions)."""
    alternatives = sorted(re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", name) for name in names)
    return f"^({'|'.join(alternatives)})$" if alternatives else "^$"


__all__ = [
    "UNTRUSTED_PUBLISHER",
    "BrokerPermissions",
    "PublisherTrust",
    "broker_permissions",
    "topic_read_pattern",
    "topic_write_pattern",
]
