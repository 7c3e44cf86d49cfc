"""A throwaway database, RabbitMQ vhost and Redis database on this machine's servers."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from dataclasses import dataclass, field

import asyncmy
import redis

# Defaults match the machine's servers; override with ORDERSTACK_TEST_MYSQL_* etc.
MYSQL_HOST = os.environ.get("ORDERSTACK_TEST_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("ORDERSTACK_TEST_MYSQL_PORT", "3306"))
MYSQL_USER = os.environ.get("ORDERSTACK_TEST_MYSQL_USER", "root")
MYSQL_PASSWORD = os.environ.get("ORDERSTACK_TEST_MYSQL_PASSWORD", "")
AMQP_HOST = os.environ.get("ORDERSTACK_TEST_AMQP_HOST", "127.0.0.1")
AMQP_PORT = int(os.environ.get("ORDERSTACK_TEST_AMQP_PORT", "5672"))
REDIS_HOST = os.environ.get("ORDERSTACK_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("ORDERSTACK_TEST_REDIS_PORT", "6379"))


class ServersUnavailable(RuntimeError):
    pass


async def _mysql(sql: str) -> None:
    conn = await asyncmy.connect(
        host=MYSQL_HOST,
        port=MYSQL_PORT,
        user=MYSQL_USER,
        password=MYSQL_PASSWORD,
        connect_timeout=5,
    )
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(sql)
    finally:
        conn.close()


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@dataclass
class Sandbox:
    """``create()`` it, pass ``env`` to the services, ``drop()`` it at the end."""

    tag: str = "test"
    name: str = field(init=False)
    redis_db: int = field(init=False)

    def __post_init__(self) -> None:
        self.name = f"os_{self.tag}_{secrets.token_hex(4)}"
        self.redis_db = 1 + secrets.randbelow(15)

    @property
    def database_url(self) -> str:
        auth = MYSQL_USER + (f":{MYSQL_PASSWORD}" if MYSQL_PASSWORD else "")
        return f"mysql://{auth}@{MYSQL_HOST}:{MYSQL_PORT}/{self.name}"

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{self.name}"

    @property
    def redis_url(self) -> str:
        return f"redis://{REDIS_HOST}:{REDIS_PORT}/{self.redis_db}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.database_url,
            "RABBITMQ_URL": self.amqp_url,
            "REDIS_URL": self.redis_url,
        }

    def create(self) -> Sandbox:
        try:
            asyncio.run(_mysql(f"CREATE DATABASE `{self.name}`"))
            redis.Redis(
                host=REDIS_HOST, port=REDIS_PORT, db=self.redis_db, socket_timeout=5
            ).flushdb()
            _rabbitmqctl("add_vhost", self.name)
            _rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        except (OSError, subprocess.SubprocessError, redis.RedisError, asyncmy.errors.Error) as exc:
            raise ServersUnavailable(f"cannot prepare sandbox {self.name}: {exc!r}") from exc
        return self

    def drop(self) -> None:
        errors: list[str] = []
        for step in (
            lambda: asyncio.run(_mysql(f"DROP DATABASE IF EXISTS `{self.name}`")),
            lambda: _rabbitmqctl("delete_vhost", self.name),
            lambda: redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=self.redis_db).flushdb(),
        ):
            try:
                step()
            except Exception as exc:  # keep dropping the rest
                errors.append(repr(exc))
        if errors:
            print(f"sandbox {self.name}: cleanup incomplete: {errors}")
