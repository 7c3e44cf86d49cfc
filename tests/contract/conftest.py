"""Contract suites: one module per port, each test run against every adapter of the port
(the in-process one and the one on a real server), as FastStream runs one suite against
two brokers; the unit of work's against SQLite, MariaDB and PostgreSQL. The server
adapters use a throwaway sandbox (a database, a RabbitMQ vhost and
a Redis database); with CI=true an unreachable server fails the run, elsewhere it skips
those cases. Every test here is marked ``integration``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from harness.sandbox import Sandbox

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module")
def sandbox(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    """Asked for only by the server adapters' cases, so the in-process ones need nothing."""
    return make_sandbox("contract")


@pytest.fixture(scope="module")
def postgresql_sandbox(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    """The same on the PostgreSQL server, for the ports with a database adapter."""
    return make_sandbox("contract", "postgresql")
