"""orderstack: an order service and a product service settling stock over events.

The house, from the top (an arrow may only point down; `lint-imports` checks it):

- ``__main__``, ``cli``: the ``orderstack`` command; ``bootstrap`` (the composition root:
  how each process and each service's app is put together) and ``dlq`` (the dead-letter
  admin command).
- ``orders``, ``products``: one package per service, neither importing the other. Inside,
  again top down: ``api`` / ``handlers`` / background tasks (adapters driving the use
  cases), ``repository`` (SQL), ``service`` (the use cases and the ports they need),
  ``events`` (what goes on the wire), ``domain`` (the rules: pure, no I/O, no framework).
- ``assembly``: the machinery every service runs (relay, consumer, pruning, lifespan,
  app, health), two plain functions for both services.
- ``infrastructure``: the adapters chosen from the settings (servers or embedded).
- ``messaging``, ``web``, ``cache``, ``batching``: adapters and their ports.
- ``config``: the one settings object. ``storage``: engines, error classification, column
  types, migrations. ``backoff``, ``periodic``, ``wire``, ``logging``, ``serving``: small
  utilities that import nothing of the project.

One order, in one pass: ``orders/api.py`` (POST /orders) -> ``orders/service.py``
(``create_order``, group commit with its ``order.created`` in the outbox) ->
``messaging/outbox.py`` (the relay publishes) -> ``products/handlers.py`` ->
``products/service.py`` (``reserve_stock``: ``products/domain.allocate`` on the locked
rows, the answer in the outbox) -> ``orders/handlers.py`` -> ``orders/service.py``
(``settle_orders``: the move ``orders/domain`` allows).
"""
