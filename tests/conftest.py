"""Fixtures shared by the integration and end-to-end tests: throwaway sandboxes on the
real MariaDB or PostgreSQL, RabbitMQ and Redis. With CI=true an unreachable server fails
the run.

``make test`` runs the suite in two pytest commands: everything not marked ``serial`` on
pytest-xdist workers (each module on one worker, ``--dist loadscope``), then the ``serial``
tests alone, one at a time. A test is ``serial`` when it takes a server away from everyone
(RabbitMQ's ``stop_app``, ``FLUSH TABLES WITH READ LOCK``) or measures time under load
(overload, stalls, the cluster chaos run): SERIAL_MODULES below, or ``@pytest.mark.serial``
on a test. The others must keep to their own sandbox (tests/conftest.py's make_sandbox:
its database, vhost and claimed Redis database), their own ports
(harness.processes.free_port: a share of the range per worker) and their own processes.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.processes import FORK_VARIABLE
from harness.sandbox import Sandbox, ServersUnavailable
from orderstack.storage import migrate
from tests.timeouts import pytest_timeout_set_timer  # noqa: F401  (a hook: the suite's timeout)

IN_CI = os.environ.get("CI", "").lower() == "true"

# The database servers the integration, contract and e2e suites run on (fixtures
# parametrized over them; see tests/integration/conftest.py and tests/e2e/conftest.py).
Database = Literal["mariadb", "postgresql"]
SERVER_DATABASES: tuple[Database, ...] = ("mariadb", "postgresql")


HERE = Path(__file__).parent

# Service processes forked from a server that has imported their code once per test
# process (harness/processes.py, ForkedProcess), not a new interpreter each: about a second
# of CPU less per start. ORDERSTACK_FORK_SERVICES=0 starts new interpreters instead.
os.environ.setdefault(FORK_VARIABLE, "1")

# Modules whose every test runs in make test's second, serial pytest command, alone on the
# machine's servers (see the module docstring): what each does to the others.
SERIAL_MODULES = {
    # (e2e/test_chaos_short.py runs its servers scenarios --isolated, beside the other
    # tests: the broker gone for its vhost, its own tables stalled; its embedded run, which
    # times its stops, is marked serial itself.)
    # (e2e/test_cluster_chaos_short.py runs beside the other tests too: its three RabbitMQ
    # nodes, HAProxy and replicas take free ports and node names of their own, as
    # tests/integration/test_broker_failover_on_cluster.py's cluster does.)
    # FLUSH TABLES WITH READ LOCK: every write and COMMIT of the whole MariaDB server held.
    "integration/test_request_deadlines.py",
    # Answers timed against the request deadline while a table is locked for 8 s.
    "e2e/test_database_stall.py",
    # Latency percentiles far past capacity: the machine's cores must be the run's own.
    "e2e/test_overload.py",
}
# Modules with some tests marked ``@pytest.mark.serial`` themselves. The serial pass
# (``-m serial``) collects only these and SERIAL_MODULES (pytest_ignore_collect: collecting
# every module to run seven tests cost it 8-9 s); a serial mark anywhere else is refused.
SERIAL_MARKED_MODULES = {
    "e2e/test_chaos_short.py",  # its embedded run, which times its stops
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "databases(*names): the database servers a test runs on, of SERVER_DATABASES"
        " (integration tests on an engine: all of them unless marked)",
    )
    config.addinivalue_line(
        "markers",
        "serial: runs alone, after the parallel part of make test (SERIAL_MODULES in"
        " tests/conftest.py: it takes a server away from everyone, or times itself)",
    )


# The order the modules are handed to the xdist workers in (make test's parallel part,
# ``--no-loadscope-reorder``: xdist's own order puts the modules of most tests first, which
# left the long e2e modules of one or two tests for the end, the cluster chaos run alone on
# one worker for its last 40 s): the longest first, as timed in make test on this box
# (docs/testing.md), so that none starts last and runs on alone; then the other e2e,
# integration and contract modules, and the unit tests, hundreds of short ones, to fill the
# gaps at the end. Within a rank, the usual order.
FIRST_MODULES = (
    "e2e/test_bench_short.py",
    "e2e/test_chaos_short.py",
    "e2e/test_cluster_chaos_short.py",
    "integration/test_broker_failover_on_cluster.py",
    "e2e/test_page.py",
    "integration/test_cache_epochs.py",
    "e2e/test_embedded_durability.py",
    "integration/test_webhook_deliveries_on_databases.py",
    "e2e/test_observability.py",
    "e2e/test_mysql8_path.py",
    "e2e/test_auth.py",
    "e2e/test_order_status_streams.py",
    "e2e/test_graceful_stop.py",
    "integration/test_dead_letters_on_rabbitmq.py",
    "e2e/test_cli.py",
)
DIRECTORY_RANK = {"e2e": 1, "integration": 2, "contract": 3, "unit": 4}


def _rank(module: str) -> tuple[int, int]:
    if module in FIRST_MODULES:
        return (0, FIRST_MODULES.index(module))
    return (DIRECTORY_RANK.get(module.split("/", 1)[0], 5), 0)


def _module(path: Path) -> str:
    try:
        return path.relative_to(HERE).as_posix()
    except ValueError:
        return ""


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The serial pass collects only the modules that hold serial tests."""
    if config.option.markexpr != "serial" or not collection_path.name.startswith("test_"):
        return None
    if collection_path.suffix != ".py":
        return None
    module = _module(collection_path)
    return module not in SERIAL_MODULES and module not in SERIAL_MARKED_MODULES


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    modules: dict[pytest.Item, str] = {}
    for item in items:
        modules[item] = _module(item.path)
        if modules[item] in SERIAL_MODULES:
            item.add_marker(pytest.mark.serial)
        elif item.get_closest_marker("serial") and modules[item] not in SERIAL_MARKED_MODULES:
            raise pytest.UsageError(
                f"{item.nodeid} is marked serial: add {modules[item]} to SERIAL_MARKED_MODULES"
                " in tests/conftest.py, or the serial pass never collects it"
            )
    items.sort(key=lambda item: _rank(modules[item]))  # stable: modules stay together


def servers_unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI needs the real servers: {reason}")
    pytest.skip(reason)


def required_program(name: str, package: str) -> str:
    """The path of a program a test runs; missing, the test fails under CI=true (.ci/run
    installs ``package``) and is skipped elsewhere."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} is missing (apt-get install {package}; .ci/run does)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def make_sandbox() -> Iterator[Callable[..., Sandbox]]:
    """``make_sandbox(tag, database="mariadb")``: a sandbox, dropped at the module's end
    (its Redis database given back for the next: there are only 15)."""
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


SERVICES: tuple[migrate.ServiceName, ...] = ("orders", "products")


@functools.cache
def migrations_head(service: migrate.ServiceName) -> str | None:
    """The newest revision of ``service``'s migrations (read once per session)."""
    package = Path(migrate.__file__).resolve().parent.parent
    cfg = Config()
    cfg.set_main_option("script_location", str(package / "storage" / "migrations"))
    cfg.set_main_option("version_locations", str(package / service / "migrations"))
    cfg.set_main_option("path_separator", "os")
    return ScriptDirectory.from_config(cfg).get_current_head()


async def at_head(engine: AsyncEngine, service: migrate.ServiceName) -> bool:
    try:
        async with engine.connect() as conn:
            versions = await conn.scalars(
                sa.text(f"SELECT version_num FROM alembic_version_{service}")  # noqa: S608
            )
            return list(versions) == [migrations_head(service)]
    except sa.exc.DBAPIError:  # no version table yet
        return False


async def upgrade_to_head(engine: AsyncEngine, *services: migrate.ServiceName) -> None:
    """``services``' migrations (both by default) at head on ``engine``'s database. Alembic
    runs only when one is not there yet (a module's first test, or after a test that
    migrated down): reading the version table costs a query, alembic about a second."""
    for service in services or SERVICES:
        if not await at_head(engine, service):
            await migrate.upgrade(engine, service)


# What each pytest process runs now, in var/running-<worker> (gw0, gw1... or main): a test
# that hangs past the timeout has its worker replaced, and the report of what it ran may
# never come (the run itself can stall); this file says which test it was.
_RUNNING = Path(__file__).resolve().parents[1] / "var"


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    _RUNNING.mkdir(exist_ok=True)
    stamp = time.strftime("%H:%M:%S")
    (_RUNNING / f"running-{worker}").write_text(f"{stamp} {nodeid}\n", encoding="utf-8")
