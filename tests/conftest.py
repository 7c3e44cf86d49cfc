"""Fixtures shared by the integration and end-to-end tests: throwaway sandboxes on the
real MariaDB or PostgreSQL, RabbitMQ and Redis. With CI=true an unreachable server fails
the run."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Literal

import pytest

from harness.sandbox import Sandbox, ServersUnavailable

IN_CI = os.environ.get("CI", "").lower() == "true"

# The database servers the integration, contract and e2e suites run on (fixtures
# parametrized over them; see tests/integration/conftest.py and tests/e2e/conftest.py).
Database = Literal["mariadb", "postgresql"]
SERVER_DATABASES: tuple[Database, ...] = ("mariadb", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "databases(*names): the database servers a test runs on, of SERVER_DATABASES"
        " (integration tests on an engine: all of them unless marked)",
    )


def servers_unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI needs the real servers: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def make_sandbox() -> Iterator[Callable[..., Sandbox]]:
    """``make_sandbox(tag, database="mariadb")``: a sandbox, dropped at the session's end."""
    created: list[Sandbox] = []

    def make(tag: str, database: Database = "mariadb") -> Sandbox:
        try:
            sandbox = Sandbox(tag, database=database).create()
        except ServersUnavailable as exc:
            servers_unavailable(str(exc))
            raise
        created.append(sandbox)
        return sandbox

    yield make
    for sandbox in created:
        sandbox.drop()
