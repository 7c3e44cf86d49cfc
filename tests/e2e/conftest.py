from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from harness.processes import EmbeddedDev
from harness.sandbox import Sandbox, ServersUnavailable
from harness.stack import Stack
from tests.conftest import SERVER_DATABASES, servers_unavailable

pytestmark = pytest.mark.e2e

# The admission's bounds for the workflow stack below, which runs beside other tests on the
# pytest-xdist workers of make test: on two shared cores an answer can take longer than
# the default 0.1 s target, and orders settle later than the default 0.5 s, with nothing
# wrong, and a refused order (503 OVERLOADED) would fail a test about something else. The
# refusals themselves are tested with the defaults, alone on the machine
# (tests/e2e/test_overload.py runs in make test's serial part).
UNHURRIED = {"ADMISSION_TARGET_SECONDS": "5", "ORDER_SETTLE_TARGET_SECONDS": "10"}
# And for every service process an end-to-end test starts (harness.processes passes the
# test process's environment on; a test's own env wins): a GET refused 503 under a run's
# load failed a test about the MySQL 8 path. What the defaults do, test_overload.py checks,
# giving them explicitly.
for _name, _value in UNHURRIED.items():
    os.environ.setdefault(_name, _value)


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest,
    make_sandbox: Callable[..., Sandbox],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """Two product replicas and one order service, as separate processes, on the real servers.

    Its database is on MariaDB, or on another of SERVER_DATABASES when a module asks,
    ``pytest.mark.parametrize("stack", ["postgresql"], indirect=True)`` (one stack per
    module and database: tests/e2e/test_postgresql.py)."""
    database = getattr(request, "param", "mariadb")
    if database not in SERVER_DATABASES:
        raise ValueError(f"no such database server: {database!r}")
    sandbox = make_sandbox("e2e", database)
    running = Stack(
        sandbox, tmp_path_factory.mktemp("logs"), product_replicas=2, extra_env=UNHURRIED
    ).start()
    try:
        running.wait_ready(timeout=30)  # connected to the database and the broker
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def make_credentialed_sandbox() -> Iterator[Callable[[str], Sandbox]]:
    """Like make_sandbox, with the sandbox's own MariaDB and RabbitMQ users, whose
    passwords hold URL-special characters (Sandbox(credentials=True)); dropped at the
    module's end."""
    created: list[Sandbox] = []

    def make(tag: str) -> Sandbox:
        try:
            sandbox = Sandbox(tag, credentials=True).create()
        except ServersUnavailable as exc:
            servers_unavailable(str(exc))
            raise
        created.append(sandbox)
        return sandbox

    yield make
    for sandbox in created:
        sandbox.drop()


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`orderstack dev`, the embedded default, on fresh files: (product URL, order URL)."""
    site = EmbeddedDev(tmp_path_factory.mktemp("embedded"))
    process = site.process().start()
    try:
        process.wait_healthy()
        yield site.product_url, site.order_url
    finally:
        process.stop()
