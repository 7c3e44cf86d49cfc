"""Fixtures shared by the integration and end-to-end tests: throwaway sandboxes on the
real MariaDB, RabbitMQ and Redis. With CI=true an unreachable server fails the run."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from harness.sandbox import Sandbox, ServersUnavailable

IN_CI = os.environ.get("CI", "").lower() == "true"


def servers_unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI needs the real servers: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def make_sandbox() -> Iterator[Callable[[str], Sandbox]]:
    created: list[Sandbox] = []

    def make(tag: str) -> Sandbox:
        try:
            sandbox = Sandbox(tag).create()
        except ServersUnavailable as exc:
            servers_unavailable(str(exc))
            raise
        created.append(sandbox)
        return sandbox

    yield make
    for sandbox in created:
        sandbox.drop()
