"""The command line as an operator meets it: bad configuration stops start-up with a message
naming the variable; a service alone without a broker is refused; migrations run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from harness.processes import SERVER_VARIABLES
from harness.sandbox import Sandbox

pytestmark = pytest.mark.e2e


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in SERVER_VARIABLES}
    return subprocess.run(
        [sys.executable, "-m", "orderstack", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DB_PORT", "not-a-port"),
        ("REDIS_HOST", "redis-without-port"),
        ("RABBITMQ_URL", "http://wrong-scheme"),
        ("DATABASE_URL", "nosuchdb://x"),
        ("PRODUCT_SERVICE_URL", "ftp://x"),
    ],
)
def test_unparseable_setting_stops_start_up_naming_the_variable(variable: str, value: str) -> None:
    result = _run("dev", env={variable: value})
    assert result.returncode == 2
    assert variable in result.stderr


def test_service_alone_without_a_broker_is_refused_with_a_clear_message() -> None:
    result = _run("serve", "order", env={})
    assert result.returncode == 2
    assert "RABBITMQ_URL" in result.stderr and "orderstack dev" in result.stderr


def test_password_in_a_bad_url_is_not_echoed() -> None:
    result = _run("dev", env={"DATABASE_URL": "nosuchdb://user:hunter2@host/db"})
    assert result.returncode == 2 and "hunter2" not in result.stderr


def test_migrate_up_and_down_one_step(make_sandbox: Callable[[str], Sandbox]) -> None:
    sandbox = make_sandbox("cli")
    env = {"DATABASE_URL": sandbox.database_url}
    up = _run("migrate", "up", env=env)
    assert up.returncode == 0, up.stderr
    assert "orders: migrated up" in up.stdout and "products: migrated up" in up.stdout
    down = _run("migrate", "down", "1", "--service", "order", env=env)
    assert down.returncode == 0, down.stderr
    again = _run("migrate", "up", "--service", "order", env=env)
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["migrate", "down", "0"],
        ["migrate", "down", "-1"],
        ["migrate", "down", "1_0"],
        ["cache", "warmup", "0"],
        ["cache", "warmup", "9223372036854775808"],
        ["cache", "warmup", "abc"],
    ],
)
def test_arguments_a_command_cannot_take_are_refused_by_the_parser(argv: list[str]) -> None:
    done = _run(*argv, env={})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr


def test_a_command_that_cannot_be_done_says_why_in_one_line() -> None:
    nothing = {
        "DATABASE_URL": "mysql://root@127.0.0.1:1/x",  # nothing listens on port 1
        "PRODUCT_SERVICE_URL": "http://127.0.0.1:1",
        "DB_CONNECT_TIMEOUT_SECONDS": "1",
    }
    migrated = _run("migrate", "up", env=nothing)
    warmed = _run("cache", "warmup", "5", env=nothing)

    assert (migrated.returncode, warmed.returncode) == (1, 1), (migrated.stderr, warmed.stderr)
    assert "orderstack migrate: " in migrated.stderr and "Traceback" not in migrated.stderr
    assert "orderstack cache: CatalogUnavailable" in warmed.stderr
    assert "Traceback" not in warmed.stderr
