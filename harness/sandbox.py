"""A throwaway database, RabbitMQ vhost and Redis database on this machine's servers.

By default the services reach them as the servers' admin users (root, guest). With
``credentials=True`` the sandbox also gets its own MariaDB user and RabbitMQ user, each
with a non-empty password full of URL-special characters, allowed on its database and
vhost only: the way an operator deploys, and what ``seed_env`` hands to the services in
the seed's variables (DB_HOST/DB_USER/DB_PASSWORD/DB_NAME, a percent-encoded RABBITMQ_URL).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from dataclasses import dataclass, field
from urllib.parse import quote

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


def _sql_string(value: str) -> str:
    """A MariaDB string literal (the values quoted here are generated, never user input)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@dataclass
class Sandbox:
    """``create()`` it, pass ``env`` to the services, ``drop()`` it at the end."""

    tag: str = "test"
    # Its own MariaDB and RabbitMQ users with passwords (see the module docstring).
    credentials: bool = False
    name: str = field(init=False)
    redis_db: int = field(init=False)
    db_user: str = field(init=False)
    db_password: str = field(init=False, repr=False)
    amqp_user: str = field(init=False)
    amqp_password: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.name = f"os_{self.tag}_{secrets.token_hex(4)}"
        self.redis_db = 1 + secrets.randbelow(15)
        if self.credentials:
            self.db_user = self.amqp_user = f"{self.name}_u"
            # Every character that means something in a URL's authority: @ : / % and more.
            self.db_password = f"p@ss:w/rd%{secrets.token_hex(4)}#?&+ x"
            self.amqp_password = f"mq@p:a/ss%{secrets.token_hex(4)}#?&+ y"
        else:
            self.db_user, self.db_password = MYSQL_USER, MYSQL_PASSWORD
            self.amqp_user = self.amqp_password = "guest"  # noqa: S105 - the default user

    @property
    def passwords(self) -> list[str]:
        """The passwords of the sandbox's own users (none without ``credentials``)."""
        return [self.db_password, self.amqp_password] if self.credentials else []

    @property
    def database_url(self) -> str:
        auth = quote(self.db_user, safe="")
        if self.db_password:
            auth += ":" + quote(self.db_password, safe="")
        return f"mysql://{auth}@{MYSQL_HOST}:{MYSQL_PORT}/{self.name}"

    @property
    def amqp_url(self) -> str:
        auth = f"{quote(self.amqp_user, safe='')}:{quote(self.amqp_password, safe='')}"
        return f"amqp://{auth}@{AMQP_HOST}:{AMQP_PORT}/{self.name}"

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

    @property
    def seed_env(self) -> dict[str, str]:
        """The same servers in the seed's variables: the database in parts (the password
        as it is, unencoded), the broker as a percent-encoded URL."""
        return {
            "DB_HOST": MYSQL_HOST,
            "DB_PORT": str(MYSQL_PORT),
            "DB_USER": self.db_user,
            "DB_PASSWORD": self.db_password,
            "DB_NAME": self.name,
            "RABBITMQ_URL": self.amqp_url,
            "REDIS_URL": self.redis_url,
        }

    def queue_backlog(self) -> dict[str, int]:
        """Messages per queue of the vhost, ready and unacknowledged together (a passive
        declare, as in invariants.queue_depths, counts only the ready ones: a message a
        consumer holds but has not finished would not show)."""
        listed = subprocess.run(
            ["rabbitmqctl", "-q", "list_queues", "-p", self.name, "--no-table-headers"]
            + ["name", "messages_ready", "messages_unacknowledged"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        backlog: dict[str, int] = {}
        for line in listed.splitlines():
            if fields := line.split():
                backlog[fields[0]] = int(fields[1]) + int(fields[2])
        return backlog

    def create(self) -> Sandbox:
        try:
            asyncio.run(_mysql(f"CREATE DATABASE `{self.name}`"))
            redis.Redis(
                host=REDIS_HOST, port=REDIS_PORT, db=self.redis_db, socket_timeout=5
            ).flushdb()
            if self.credentials:
                user = f"{_sql_string(self.db_user)}@'%'"
                asyncio.run(
                    _mysql(f"CREATE USER {user} IDENTIFIED BY {_sql_string(self.db_password)}")
                )
                asyncio.run(_mysql(f"GRANT ALL PRIVILEGES ON `{self.name}`.* TO {user}"))
                _rabbitmqctl("add_user", self.amqp_user, self.amqp_password)
            _rabbitmqctl("add_vhost", self.name)
            _rabbitmqctl("set_permissions", "-p", self.name, self.amqp_user, ".*", ".*", ".*")
        except (OSError, subprocess.SubprocessError, redis.RedisError, asyncmy.errors.Error) as exc:
            self.drop()  # what was made so far
            raise ServersUnavailable(f"cannot prepare sandbox {self.name}: {exc!r}") from exc
        return self

    def drop(self) -> None:
        """Best effort: every step is tried, whatever failed before."""
        errors: list[str] = []
        steps = [
            lambda: asyncio.run(_mysql(f"DROP DATABASE IF EXISTS `{self.name}`")),
            lambda: _rabbitmqctl("delete_vhost", self.name),
            lambda: redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=self.redis_db).flushdb(),
        ]
        if self.credentials:
            steps += [
                lambda: asyncio.run(_mysql(f"DROP USER IF EXISTS {_sql_string(self.db_user)}@'%'")),
                lambda: _rabbitmqctl("delete_user", self.amqp_user),
            ]
        for step in steps:
            try:
                step()
            except Exception as exc:  # keep dropping the rest
                errors.append(repr(exc))
        if errors:
            print(f"sandbox {self.name}: cleanup incomplete: {errors}")
