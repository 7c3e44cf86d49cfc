"""Contract suites: one module per port, each test run against every adapter of the port
(the in-process one and the one on a real server), as FastStream runs one suite against
two brokers; the unit of work's against SQLite, MariaDB and PostgreSQL. The server
adapters use a throwaway sandbox (a database, a RabbitMQ vhost and
a Redis database); with CI=true an unreachable server fails the run, elsewhere it skips
those cases.

A case on a server adapter is marked ``integration``; a case on the in-process or SQLite
adapter is not, so ``make check`` (``-m "not integration"``) runs it without a server. A
case is on a server when one of its parameters names a server (``SERVER_PARAMS``) or it
asks for a sandbox fixture by name; a case of this directory without parameters is taken
to need one unless it is marked ``serverless``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from harness.sandbox import Sandbox

HERE = Path(__file__).parent


# The adapters' parameter values that need a server (the fixtures' params of each suite).
SERVER_PARAMS = frozenset({"rabbitmq", "redis", "mariadb", "postgresql"})
# The ones that run in this process or on a file: no server.
SERVERLESS_PARAMS = frozenset({"in-process", "inprocess", "memory", "sqlite"})
SANDBOX_FIXTURES = frozenset({"sandbox", "postgresql_sandbox", "make_sandbox"})


def _needs_a_server(item: pytest.Item) -> bool:
    if item.get_closest_marker("serverless") is not None:
        return False
    if SANDBOX_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    values = {v for v in callspec.params.values() if isinstance(v, str)} if callspec else set()
    if values & SERVER_PARAMS:
        return True
    # Only a case shown to be on an in-process or file adapter runs without the servers.
    return not values & SERVERLESS_PARAMS


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents and _needs_a_server(item):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module")
def sandbox(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    """Asked for only by the server adapters' cases, so the in-process ones need nothing."""
    return make_sandbox("contract")


@pytest.fixture(scope="module")
def postgresql_sandbox(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    """The same on the PostgreSQL server, for the ports with a database adapter."""
    return make_sandbox("contract", "postgresql")
