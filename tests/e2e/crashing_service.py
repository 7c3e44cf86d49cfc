"""``python -m tests.e2e.crashing_service serve order|product``: a service whose process
dies (exit 70) at its first publish, after the relay took the committed rows and before
the broker got them: the crash the recovery tests need, injected by wrapping the bus in
the Infrastructure given to the service's app (bootstrap.py). Nothing of it is shipped.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

from orderstack.bootstrap import order_app, product_app
from orderstack.config import load_settings
from orderstack.infrastructure import Infrastructure
from orderstack.messaging.bus import Bus
from orderstack.messaging.envelope import Event
from orderstack.serving import serve

EXIT_CODE = 70


class CrashBeforePublish:
    """The bus port, except that a publish ends the process."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bus, name)

    async def publish(self, events: Sequence[Event]) -> None:
        await asyncio.sleep(0.5)  # let the HTTP answer of the request leave first
        os._exit(EXIT_CODE)


def main(argv: list[str]) -> None:
    _serve, service = argv
    settings = load_settings()
    infra = Infrastructure.from_settings(settings, both_services=False)
    infra.bus = CrashBeforePublish(infra.bus)  # type: ignore[assignment]
    if service == "order":
        app, port = order_app(settings, infra), settings.PORT or settings.ORDER_PORT
    else:
        app, port = product_app(settings, infra), settings.PORT or settings.PRODUCT_PORT
    serve(app, settings.HOST, port)


if __name__ == "__main__":
    main(sys.argv[1:])
