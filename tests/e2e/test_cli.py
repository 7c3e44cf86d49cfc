"""The command line as an operator meets it: bad configuration stops start-up with a message
naming the variable; a service alone without a broker is refused; an address that cannot be
listened on ends start-up at once; a stop signal during start-up stops at once; migrations
run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.processes import SERVER_VARIABLES, free_port, run_command
from harness.sandbox import Sandbox

pytestmark = pytest.mark.e2e


def _run(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in SERVER_VARIABLES}
    return run_command(args, {**clean, **env}, cwd=cwd, timeout=timeout)


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


@pytest.mark.parametrize("service", ["order", "product"])
def test_a_service_without_keys_or_auth_mode_off_refuses_to_start_in_one_line(
    service: str,
) -> None:
    """Authentication is not something an operator can forget: no keys and no explicit
    AUTH_MODE=off is a refusal before anything starts, saying what to set."""
    result = _run("serve", service, env={"RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:1/"})

    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "AUTH_SIGNING_KEY" in lines[0] and "AUTH_JWKS_URL" in lines[0]
    assert "AUTH_MODE=off" in lines[0]


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


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RABBITMQ_URL", "amqp://guest:guest@localhost:99999/"),
        ("REDIS_URL", "redis://:abc/0"),
        ("PRODUCT_SERVICE_URL", "http://host:notaport"),
        ("DATABASE_URL", "mysql://root@/orderdb"),
    ],
)
def test_a_url_with_a_bad_host_or_port_stops_start_up_naming_the_variable(
    variable: str, value: str
) -> None:
    """Found by the settings, before anything starts: not a traceback at start, nor a
    broker retried for ever, nor a 500 per order."""
    env = {"RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:5672/", variable: value}
    result = _run("serve", "order", env=env, timeout=30)

    assert result.returncode == 2, result.stderr
    assert variable in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_a_service_whose_port_is_in_use_exits_at_once_saying_so(
    make_sandbox: Callable[[str], Sandbox], taken_port: int
) -> None:
    """On the real servers: before, the service migrated, connected to the broker, failed
    to bind, and then hung on the broker connection's reconnect, deaf to SIGTERM."""
    env = {
        **make_sandbox("cli").env,
        "HOST": "127.0.0.1",
        "PORT": str(taken_port),
        "AUTH_MODE": "off",
    }
    started = time.monotonic()
    result = _run("serve", "order", env=env, timeout=60)

    assert result.returncode == 1, result.stderr
    # At once: before, it hung on the broker for ever. The bound leaves room for the
    # imports of a cold start beside two other xdist workers (17 s seen).
    assert time.monotonic() - started < 25
    assert result.stderr.strip().splitlines() == [
        f"orderstack serve order: cannot listen on 127.0.0.1:{taken_port}: Address already in use"
    ]


def test_dev_whose_order_port_is_in_use_exits_at_once_saying_so(
    tmp_path: Path, taken_port: int
) -> None:
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'orderstack.db'}",
        "HOST": "127.0.0.1",
        "ORDER_PORT": str(taken_port),
        "PRODUCT_PORT": str(free_port()),
    }
    started = time.monotonic()
    result = _run("dev", env=env, cwd=tmp_path, timeout=60)

    assert result.returncode == 1, result.stderr
    # At once: before, it hung on the broker for ever. The bound leaves room for the
    # imports of a cold start beside two other xdist workers (17 s seen).
    assert time.monotonic() - started < 25
    assert f"cannot listen on 127.0.0.1:{taken_port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "orderstack.db").exists()  # nothing started: not even migrations


def test_a_host_that_is_not_an_address_exits_at_once_naming_it() -> None:
    env = {
        "RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:1/",
        "HOST": "999.1.1.1",
        "AUTH_MODE": "off",
    }
    result = _run("serve", "order", env=env, timeout=30)

    assert result.returncode == 1, result.stderr
    assert "orderstack serve order: cannot listen on 999.1.1.1:" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("command", "stop"),
    [(["serve", "order"], signal.SIGTERM), (["dev"], signal.SIGINT), (["dev"], signal.SIGTERM)],
    ids=["serve-SIGTERM", "dev-Ctrl-C", "dev-SIGTERM"],
)
def test_a_stop_signal_while_start_up_waits_for_the_database_stops_at_once(
    tmp_path: Path, command: list[str], stop: signal.Signals
) -> None:
    """The migrations retry a database that cannot be reached (nothing listens on its
    port); a stop then is a stop like any other, exit 0 (before: the 15 s watchdog,
    exit 1)."""
    clean = {k: v for k, v in os.environ.items() if k not in SERVER_VARIABLES}
    env = {
        **clean,
        "DATABASE_URL": f"mysql://root@127.0.0.1:{free_port()}/nowhere",
        "RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:1/",  # not reached: start-up waits
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "ORDER_PORT": str(free_port()),
        "PRODUCT_PORT": str(free_port()),
        "LOG_FORMAT": "json",
        "AUTH_MODE": "off",
    }
    if command == ["dev"]:
        del env["RABBITMQ_URL"]  # the embedded bus
    log = tmp_path / "out.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "orderstack", *command],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while "migration retried" not in log.read_text(errors="replace"):
            assert process.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "start-up never waited for the database"
            time.sleep(0.05)
        signalled = time.monotonic()
        process.send_signal(stop)
        code = process.wait(timeout=30)
        took = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    output = log.read_text(errors="replace")
    assert code == 0, output
    assert took < 3, output
    assert "stopped during start-up" in output
    assert "Traceback" not in output
