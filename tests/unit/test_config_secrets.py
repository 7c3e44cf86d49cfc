"""Secrets in the settings: DB_PASSWORD and the URLs that hold a password (DATABASE_URL,
RABBITMQ_URL, REDIS_URL) are SecretStr, so no repr, dump or log line of the settings shows
them; and a service that cannot reach its broker, cache or database logs why without the
password of the URL it tried (``orderstack serve``, the real process, its real output)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orderstack.config import Settings, load_settings

SECRETS = {
    "DB_PASSWORD": "db-Secret-41",
    "DATABASE_URL": "mysql://app:url-Secret-42@db.internal:3306/orderdb",
    "RABBITMQ_URL": "amqp://app:mq-Secret-43@rmq1:5672/,amqp://app:mq-Secret-43@rmq2:5672/",
    "REDIS_URL": "redis://:cache-Secret-44@cache.internal:6380/2",
}
PASSWORDS = ("db-Secret-41", "url-Secret-42", "mq-Secret-43", "cache-Secret-44")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)


def test_no_repr_or_dump_of_the_settings_shows_a_password() -> None:
    settings = load_settings(**SECRETS)

    shown = "\n".join(
        (
            repr(settings),
            str(settings),
            str(settings.model_dump()),
            settings.model_dump_json(),
            repr(settings.database_url),  # SQLAlchemy's URL masks its password
        )
    )
    for password in PASSWORDS:
        assert password not in shown, password


def test_the_adapters_still_get_the_passwords() -> None:
    settings = load_settings(**SECRETS)

    assert settings.database_url.password == PASSWORDS[1]
    assert settings.amqp_url == SECRETS["RABBITMQ_URL"]
    assert settings.redis_url == SECRETS["REDIS_URL"]
    assert settings.broker_user == "app"
    parts = load_settings(DB_HOST="db", DB_PASSWORD=PASSWORDS[0])
    assert parts.database_url.password == PASSWORDS[0]
    assert parts.DB_PASSWORD.get_secret_value() == PASSWORDS[0]


def _serve_output(tmp_path: Path, env: dict[str, str], until: tuple[str, ...]) -> str:
    """``orderstack serve product`` with ``env`` until its output shows each of ``until``
    (bounded: 30 s, a loaded machine starts it slowly), stopped with SIGTERM: all it wrote."""
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "orderstack", "serve", "product"],
            cwd=tmp_path,
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(tmp_path),
                "AUTH_MODE": "off",  # no authentication settings needed to start
                "ADMIN_TOKEN": "admin-token-for-the-test",
                "HOST": "127.0.0.1",
                "PORT": str(_free_port()),
                "LOG_LEVEL": "DEBUG",
                **env,
            },
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while process.poll() is None and not all(
                line in log.read_text(errors="replace") for line in until
            ):
                assert time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
                time.sleep(0.1)
            time.sleep(0.5)  # a retry or two more
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return log.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# Ports nothing listens on (the first port of each range is never handed out).
CLOSED = "127.0.0.1:1"


def test_an_unreachable_broker_and_cache_are_logged_without_their_passwords(
    tmp_path: Path,
) -> None:
    output = _serve_output(
        tmp_path,
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'orderstack.db'}",
            "RABBITMQ_URL": f"amqp://app:mq-Secret-43@{CLOSED}/,amqp://app:mq-Secret-43@{CLOSED}/",
            "REDIS_URL": f"redis://:cache-Secret-44@{CLOSED}/0",
        },
        until=("broker unreachable", "redis unavailable"),
    )

    assert "broker unreachable" in output, output[-2000:]  # the line that names the URL
    assert "amqp://app:******@127.0.0.1:1/" in output
    for password in PASSWORDS:
        assert password not in output, password


def test_an_unreachable_database_is_logged_without_its_password(tmp_path: Path) -> None:
    output = _serve_output(
        tmp_path,
        {
            "DB_HOST": "127.0.0.1",
            "DB_PORT": "1",
            "DB_USER": "app",
            "DB_PASSWORD": "db-Secret-41",
            "RABBITMQ_URL": f"amqp://app:mq-Secret-43@{CLOSED}/",
        },
        until=("database unreachable",),
    )

    assert "database unreachable" in output, output[-2000:]
    for password in PASSWORDS:
        assert password not in output, password
