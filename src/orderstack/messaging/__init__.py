"""Messaging both services share: the envelope codec, the bus port and its adapters
(RabbitMQ; the durable local bus of the embedded default), the transactional outbox and
its relay, the inbox, the unit of work that writes them with a change, the consumer loop
and whose events it believes (each service's broker user: ``trust``), retention, and the
dead-letter admin port. May import ``config``, ``storage`` and the
utilities; never a service."""
