from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from orderstack.harness.sandbox import Sandbox
from orderstack.harness.stack import Stack

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
