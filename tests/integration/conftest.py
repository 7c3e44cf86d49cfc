"""Integration fixtures: a module's sandbox (a database, a RabbitMQ vhost, a Redis database)
and an engine on its database, migrated.

A test that uses ``engine`` runs once per database server of ``SERVER_DATABASES``
(MariaDB, PostgreSQL), each on its own sandbox; ``@pytest.mark.databases("mariadb")``
keeps a test that is about one server's behaviour (its error codes, its collations) to
that server. A test that needs only the broker or Redis runs once, on the MariaDB
sandbox."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.sandbox import Sandbox
from orderstack.storage.engine import Timeouts, create_engine
from tests.conftest import SERVER_DATABASES, Database, upgrade_to_head

pytestmark = pytest.mark.integration


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "database" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("databases")
    if marker is not None:
        names = tuple(marker.args)
    elif "engine" in metafunc.fixturenames:
        names = SERVER_DATABASES
    else:
        names = ("mariadb",)
    # Every test of a module on one server shares that server's sandbox (module scope).
    metafunc.parametrize("database", names, scope="module")


@pytest.fixture(scope="module")
def database() -> Database:
    """The database server of this test's sandbox (parametrized by pytest_generate_tests)."""
    return "mariadb"


@pytest.fixture(scope="module")
def sandbox(make_sandbox: Callable[..., Sandbox], database: Database) -> Sandbox:
    return make_sandbox("it", database)


@pytest.fixture(scope="module")
def postgresql_sandbox(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    """A PostgreSQL sandbox beside the module's own, for a fixture that chooses its server
    itself (a parametrized one that also covers SQLite, say)."""
    return make_sandbox("it", "postgresql")


@pytest.fixture
async def engine(sandbox: Sandbox) -> AsyncIterator[AsyncEngine]:
    """An engine on the module's sandbox database, both services' migrations at head.
    Alembic runs only when a service is not at head (the module's first test, or after a
    test that migrated down): reading the version tables costs a query, alembic about a
    second per test."""
    # Tests run a hundred reservations at once on it: beside two other xdist workers on two
    # cores a connection can be busy past the 5 s a request waits in production.
    engine = create_engine(sandbox.engine_url, pool_size=20, timeouts=Timeouts(pool=60.0))
    await upgrade_to_head(engine)
    yield engine
    await engine.dispose()
