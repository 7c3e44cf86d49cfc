from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from harness.sandbox import Sandbox, ServersUnavailable
from harness.stack import Stack
from tests.conftest import servers_unavailable

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(
    make_sandbox: Callable[[str], Sandbox], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Two product replicas and one order service, as separate processes, on the real servers."""
    sandbox = make_sandbox("e2e")
    running = Stack(sandbox, tmp_path_factory.mktemp("logs"), product_replicas=2).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def make_credentialed_sandbox() -> Iterator[Callable[[str], Sandbox]]:
    """Like make_sandbox, with the sandbox's own MariaDB and RabbitMQ users, whose
    passwords hold URL-special characters (Sandbox(credentials=True)); dropped at the end."""
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
