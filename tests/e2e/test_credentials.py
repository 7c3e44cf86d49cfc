"""The stack deployed as an operator deploys it: its own MariaDB user and RabbitMQ user
(own vhost), each with a password full of URL-special characters, given in the seed's
variables (DB_HOST/DB_USER/DB_PASSWORD/DB_NAME, a percent-encoded RABBITMQ_URL). The
services connect and run the complete flow; a wrong password is a clear, quick failure
(the process exits naming the refusal, or /readyz says 503), never a hang; no password
shows in the logs or in /health."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from harness.processes import ServiceProcess
from harness.sandbox import Sandbox
from harness.stack import Stack

from .workflows import (
    ONLY_SEED_VARIABLES,
    complete_order_flow,
    error_handling_flow,
    health_is_green,
    leaks,
)

pytestmark = pytest.mark.e2e

WRONG_DB_PASSWORD = "wr0ng-p@ss:w/rd%db"  # noqa: S105 - a throwaway test value
WRONG_AMQP_PASSWORD = "wr0ng-p@ss:w/rd%mq"  # noqa: S105 - a throwaway test value


@pytest.fixture(scope="module")
def sandbox(make_credentialed_sandbox: Callable[[str], Sandbox]) -> Sandbox:
    return make_credentialed_sandbox("creds")


@pytest.fixture(scope="module")
def stack(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(
        sandbox,
        tmp_path_factory.mktemp("logs"),
        seed_variables=True,
        extra_env=ONLY_SEED_VARIABLES,
    ).start()
    try:
        yield running
    finally:
        running.stop()


def test_the_sandbox_users_have_passwords_that_need_encoding(sandbox: Sandbox) -> None:
    assert sandbox.db_user != "root" and sandbox.amqp_user != "guest"
    for password in sandbox.passwords:
        assert set("@:/%") <= set(password)
    env = sandbox.seed_env
    assert env["DB_PASSWORD"] == sandbox.db_password  # as it is, for the service to encode
    assert sandbox.amqp_password not in env["RABBITMQ_URL"]  # percent-encoded
    assert quote(sandbox.amqp_password, safe="") in env["RABBITMQ_URL"]


async def test_the_complete_flow_runs_on_users_with_passwords(stack: Stack) -> None:
    await asyncio.to_thread(stack.wait_ready)  # both connected with their passwords
    async with httpx.AsyncClient(timeout=10) as client:
        await health_is_green(client, stack.product_url, stack.order_url)
        await complete_order_flow(client, stack.product_url, stack.order_url)
        await error_handling_flow(client, stack.product_url, stack.order_url)
        for url in (stack.product_url, stack.order_url):
            health = await client.get(f"{url}/health")
            assert leaks(health.text, stack.sandbox.passwords) == []


def _exit_within(process: ServiceProcess, seconds: float) -> int:
    assert process.process is not None
    try:
        return process.process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(
            f"{process.name} neither failed nor stopped: {process.tail()}"
        ) from None


@pytest.mark.parametrize("service", ["product", "order"])
def test_a_wrong_database_password_fails_at_once_and_says_access_denied(
    stack: Stack, service: str, tmp_path: Path
) -> None:
    running = stack.products[0] if service == "product" else stack.orders[0]
    env = {**running.env, "DB_PASSWORD": WRONG_DB_PASSWORD}
    started = time.monotonic()
    process = ServiceProcess(f"{service}-wrong-db", ["serve", service], env, tmp_path).start()
    code = _exit_within(process, 20)
    log = process.log_path.read_text()
    assert code != 0, log
    assert time.monotonic() - started < 20
    assert "Access denied for user" in log and stack.sandbox.db_user in log, log
    assert leaks(log, [WRONG_DB_PASSWORD, *stack.sandbox.passwords]) == []


async def test_a_wrong_broker_password_is_not_ready_and_says_access_refused(
    stack: Stack, tmp_path: Path
) -> None:
    sandbox = stack.sandbox
    wrong = sandbox.amqp_url.replace(
        quote(sandbox.amqp_password, safe=""), quote(WRONG_AMQP_PASSWORD, safe="")
    )
    assert wrong != sandbox.amqp_url
    env = {**stack.products[0].env, "RABBITMQ_URL": wrong}
    process = ServiceProcess("product-wrong-mq", ["serve", "product"], env, tmp_path).start()
    try:
        process.wait_healthy(timeout=20, path="/readyz")
        async with httpx.AsyncClient(timeout=10) as client:
            deadline = time.monotonic() + 10
            while "ACCESS_REFUSED" not in process.log_path.read_text():
                assert time.monotonic() < deadline, process.tail()
                await asyncio.sleep(0.1)
            ready = await client.get(f"{process.url}/readyz")
            assert ready.status_code == 503, ready.text
            assert ready.json() == {
                "status": "not ready",
                "services": {"database": "up", "rabbitmq": "down"},
            }
            health = await client.get(f"{process.url}/health")
            assert health.status_code == 503 and health.json()["services"]["rabbitmq"] == "down"
            texts = [ready.text, health.text]
    finally:
        process.stop()
    log = process.log_path.read_text()
    assert "broker unavailable, retrying" in log
    assert leaks("\n".join([log, *texts]), [WRONG_AMQP_PASSWORD, *stack.sandbox.passwords]) == []


def test_no_password_in_the_service_logs(stack: Stack) -> None:
    for process in [*stack.products, *stack.orders]:
        log = process.log_path.read_text()
        assert log, process.name
        assert leaks(log, stack.sandbox.passwords) == []
